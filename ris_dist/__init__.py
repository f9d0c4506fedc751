"""ris_dist: distributed training of learned covariances for RIS near-field localization."""

__version__ = "0.1.0"
