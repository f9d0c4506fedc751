"""Loss configuration: the λ of every term and how the loss is formed.

Kept apart from ``ris_dist.losses`` (which needs torch) so configs load, print and validate
without importing torch (``python -m ris_dist.train --print-config``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

from .config.schema import check

StructureForm = Literal["projector", "svd"]


@dataclass(frozen=True)
class LossWeights:
    """λ of every term. Every default is 0: a term the phase config does not name is off."""

    lam_cov: float = 0.0
    """NMSE of R_eff against R_true."""
    lam_k: float = 0.0
    """Source-count cross-entropy (+ under-count penalty)."""
    lam_gap: float = 0.0
    """Eigengap between the K-th and (K+1)-th eigenvalue of R_eff."""
    lam_subspace: float = 0.0
    """Alignment of R_eff's dominant subspace with span(A)."""
    lam_peak: float = 0.0
    """MUSIC-like peak contrast at the true steering vectors."""
    lam_ortho: float = 0.0
    """Coupling between span(A) and its complement through R_eff (invariance of span(A))."""
    lam_locate: float = 0.0
    """Soft-argmax position loss: the MUSIC-like null of R_eff at each true source against its neighbours."""
    lam_null: float = 0.0
    """MUSIC's null spectrum ‖E_nᴴ a_k‖² of R_eff at the true sources (a smooth noise projector, true K)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            check(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0.0,
                  f.name, v, "a loss weight must be finite and >= 0")


@dataclass(frozen=True)
class LossConfig:
    """How the loss is formed (weights are usually overridden per step by the trainer's ramp)."""

    weights: LossWeights = field(default_factory=LossWeights)
    """Static weights; all zero unless named."""
    k_under_weight: float = 0.0
    """Not a λ: the K loss is CE + k_under_weight·P(K̂ < K) (softmax mass on under-counts).
    0 (the default) is plain cross-entropy; MUSIC loses sources when K is under-counted,
    while an over-count only adds a spurious peak, which motivates values > 0."""
    structure_form: StructureForm = "projector"
    """Which form of the structure terms: "projector" (truth projector / resolvent) or "svd"
    (eigen/singular values only). Both are eigenvector-free; see the module docstring."""

    def __post_init__(self) -> None:
        check(math.isfinite(self.k_under_weight) and self.k_under_weight >= 0, "k_under_weight",
              self.k_under_weight, "must be finite and >= 0")
        check(self.structure_form in ("projector", "svd"), "structure_form", self.structure_form,
              "must be 'projector' or 'svd'")
