"""Model hyper-parameters (:class:`ModelConfig`) and the named presets.

Every field is validated in ``__post_init__`` with :func:`ris_dist.config.schema.check`,
so ``build(ModelConfig, MODEL_PRESETS["tiny"] | overrides)`` rejects unknown keys,
wrong types and impossible values with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config.schema import build, check


@dataclass(frozen=True)
class ModelConfig:
    """Shape of :class:`ris_dist.model.net.CovarianceNet` (no field depends on the system)."""

    width: int
    """d: token width of the transformer backbone."""
    depth: int
    """Number of pre-norm transformer blocks."""
    heads: int
    """Attention heads per block; must divide ``width``."""
    rank: int
    """r: columns of the complex low-rank factor F [B, N, r]; R_pred = F F^H has rank <= r.
    Choose r >= K_max so every true covariance is representable."""
    dropout: float = 0.0
    """Dropout probability p in 0 <= p < 1 (attention, FFN, heads). 0 builds no dropout at all."""
    ffn_mult: int = 4
    """FFN hidden width = ffn_mult * width."""
    cov_head_hidden: int = 256
    """Hidden width of the covariance-head MLP, applied per element token (token n -> 2·r reals
    = row n of the factor F)."""
    cov_head_layers: int = 2
    """Hidden layers of the per-element covariance-head MLP (>= 1)."""
    k_head_hidden: int = 64
    """Hidden width of the source-count head MLP (mean of the final tokens -> K_max logits)."""
    snapshot_features: bool = True
    """Append the back-projected snapshots x̂_{1..L}[n] (re/im) to element token n."""
    candidates: int = 0
    """m: steering candidates from the Bartlett spectrum Σ_l |a(η)^H x̂_l|² on a (u, w, 1/r)
    grid, its m highest local maxima (3×3×3 non-maximum suppression). Element token n gets
    √N·a_n(η_j) (re/im) of each, the global token their relative spectrum values. 0 turns
    them off. They give the network a phase reference per element where R_samp has none
    (docs/full_recipe.md, "Why full-lite did not fit")."""
    candidate_spacing_cells: float = 0.5
    """Grid step of the candidate search in resolution cells per axis."""
    candidate_refine_levels: int = 0
    """Levels of axis-wise parabolic steps on the one-source likelihood Σ_l |(G_l a)^H y_l|² / ‖G_l a‖²
    applied to each candidate after the grid search (probe ±step/2, halving per level; 7 likelihood
    evaluations per candidate and level). 0 keeps the Bartlett peaks, biased when M < N
    (ris_dist/model/candidates.py)."""

    def __post_init__(self) -> None:
        for key in ("width", "depth", "heads", "ffn_mult", "cov_head_hidden", "cov_head_layers", "k_head_hidden"):
            value = getattr(self, key)
            check(value >= 1, key, value, "must be >= 1")
        check(self.width % self.heads == 0, "heads", self.heads, f"must divide width = {self.width}")
        check(isinstance(self.snapshot_features, bool), "snapshot_features", self.snapshot_features,
              "must be true or false")
        check(self.rank >= 1, "rank", self.rank, "the factor rank r must be >= 1")
        check(isinstance(self.candidates, int) and self.candidates >= 0, "candidates", self.candidates,
              "must be an integer >= 0")
        check(math.isfinite(self.candidate_spacing_cells) and self.candidate_spacing_cells > 0,
              "candidate_spacing_cells", self.candidate_spacing_cells, "must be > 0")
        check(isinstance(self.candidate_refine_levels, int) and not isinstance(self.candidate_refine_levels, bool)
              and self.candidate_refine_levels >= 0, "candidate_refine_levels", self.candidate_refine_levels,
              "must be an integer >= 0")
        check(math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", self.dropout,
              "must satisfy 0 <= p < 1")


# Sizes on their target systems (counted by tests/test_model.py):
#   tiny on the tiny system (N=16, M=8, L=16, K_max=2): ~0.46M parameters (17 tokens), ~0.1 s per
#   CPU step at batch 128.
#   full on the full system (N=144, M=16, L=16, K_max=5): ~6.7M backbone + ~9.0M heads ≈ 15.7M,
#   matching the design's "about 16M" and its 1:4 backbone:head learning-rate split.
#   full-lite on the full system: ~1.3M parameters, the same architecture at a quarter of the
#   width and half the depth of full, for the whole full-physics curriculum on a CPU
#   (docs/full_recipe.md). rank 8 >= K_max = 5 as in full.
#   Both full-system presets take 8 Bartlett steering candidates: without them the network did not
#   fit 512 full scenes (python -m ris_dist.bench learnability; docs/full_recipe.md).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=96, depth=3, heads=4, rank=4, dropout=0.0, ffn_mult=4,
                 cov_head_hidden=256, cov_head_layers=2, k_head_hidden=64, snapshot_features=True),
    "full": dict(width=256, depth=8, heads=8, rank=8, dropout=0.0, ffn_mult=4,
                 cov_head_hidden=2048, cov_head_layers=3, k_head_hidden=256, snapshot_features=True,
                 candidates=8),
    "full-lite": dict(width=128, depth=4, heads=4, rank=8, dropout=0.0, ffn_mult=4,
                      cov_head_hidden=512, cov_head_layers=2, k_head_hidden=128, snapshot_features=True,
                      candidates=8),
}


def model_config(preset: str, **overrides: Any) -> ModelConfig:
    """Validated :class:`ModelConfig` from a named preset plus field overrides."""
    if preset not in MODEL_PRESETS:
        from ..config.schema import ConfigError

        raise ConfigError(f"model preset {preset!r}: unknown (known: {', '.join(sorted(MODEL_PRESETS))})")
    return build(ModelConfig, {**MODEL_PRESETS[preset], **overrides}, prefix="model.")
