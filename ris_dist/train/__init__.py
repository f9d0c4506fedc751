"""Training: config, loop, checkpoints, validation, phase gates. Entry point: ``python -m ris_dist.train``."""
