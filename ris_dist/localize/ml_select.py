"""K̂ and positions from given start points by the ML likelihood: the learned pipeline's ``model+ml_k``.

system_model.md ("Refinement"). For every source count k = 1..K_max the caller supplies a few
more than k start points (MUSIC's best distinct peaks of R_eff with a k-dimensional signal
subspace, :func:`~ris_dist.localize.music.music_candidates`). Per k:

1. the k-subset of the starts with the lowest concentrated NLL (every subset scored in one batched
   call, no derivatives; runners-up rescue scenes where a sidelobe outranks a weak source);
   below ``grid_start_below_db`` (10 dB, chosen on the dev split) B4's sequential start competes:
   the scene's refined fit with k − 1 sources held and the k-th at its grid maximum of the
   likelihood. Where MUSIC on R_eff misses a weak source at low SNR, the grid still finds it;
2. ``iterations`` joint refinement steps from that subset (:func:`~ris_dist.localize.ml_refine.refine`).

K̂ = argmin_k 2·NLL_k + ``order_penalty``·4k·log L − 2·``prior_weight``·log p(k): B4's BIC
(:func:`~ris_dist.localize.ml.bic`) with the K head's class probabilities p(k | x) as a prior (weight 0, or no prior
given, is the plain BIC). The order penalty and the prior weight were chosen on a dev split
(docs/results/yardstick/README.md).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ..config import SystemConfig
from .estimates import Estimates
from .ml import MLConfig, bic, next_source_on_grid
from .ml_likelihood import Measurements, check_shapes, concentrated_nll, measurements
from .ml_refine import refine
from .subspace import validate_num_sources


@dataclass(frozen=True)
class SelectConfig:
    """Knobs of ``refine="ml_k"``; the defaults are the ones chosen on the tiny dev split."""

    extra_starts: int = 2
    """Runners-up among MUSIC's distinct peaks scored as start points beyond the k needed (3 did no better)."""
    order_penalty: float = 1.0
    """Multiplier of the BIC penalty 4k·log L; 1 is the BIC."""
    prior_weight: float = 1.0
    """Weight of −2·log p(k | x) from the K head; 0 is the plain BIC."""
    grid_start_below_db: float = 10.0
    """Scenes with an SNR below this (dB) also start every k from B4's sequential search: their
    k − 1 fit held and the k-th source at its grid maximum of the likelihood, kept where it beats
    MUSIC's best subset (−inf: never, inf: always)."""

    def __post_init__(self) -> None:
        if isinstance(self.extra_starts, bool) or not isinstance(self.extra_starts, int) or self.extra_starts < 0:
            raise ValueError(f"extra_starts must be an integer >= 0, got {self.extra_starts!r}")
        if not isinstance(self.grid_start_below_db, (int, float)) or math.isnan(self.grid_start_below_db):
            raise ValueError(f"grid_start_below_db must be a number (dB, ±inf allowed), got {self.grid_start_below_db!r}")
        for key in ("order_penalty", "prior_weight"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a number >= 0, got {value!r}")


def best_subset(system: SystemConfig, meas: Measurements, starts: torch.Tensor, k: int) -> torch.Tensor:
    """The k of ``starts [B, C, 3]`` (φ deg, θ deg, r m) whose joint concentrated NLL is lowest, ``[B, k, 3]``."""
    B, C, _ = starts.shape
    if not 1 <= k <= C:
        raise ValueError(f"k must be in 1..{C} (the number of starts), got {k}")
    subsets = list(itertools.combinations(range(C), k))
    trial = torch.stack([starts[:, list(s)] for s in subsets], 1)  # [B, Q, k, 3]
    active = torch.ones(B * len(subsets), k, dtype=torch.bool, device=starts.device)
    nll, _ = concentrated_nll(system, meas.repeat(len(subsets)), trial.reshape(-1, k, 3), active)
    best = nll.reshape(B, len(subsets)).argmin(-1)
    return trial[torch.arange(B, device=starts.device), best]


def _sequential_start(system: SystemConfig, meas: Measurements, held: torch.Tensor, held_powers: torch.Tensor
                      ) -> torch.Tensor:
    """B4's sequential search step ``[B, k, 3]``: the fit with k − 1 sources held, the k-th at its grid maximum."""
    new = next_source_on_grid(system, meas, held, held_powers, MLConfig())
    return torch.cat([held, new[:, None].to(held.dtype)], 1)


def _everyone(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)


def _better_of(system: SystemConfig, meas: Measurements, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per scene, whichever of two k-source configurations ``[B, k, 3]`` has the lower concentrated NLL."""
    k = first.shape[1]
    both = torch.stack([first, second], 1).reshape(-1, k, 3)  # scene-major, as Measurements.repeat
    value, _ = concentrated_nll(system, meas.repeat(2), both, _everyone(both))
    value = value.reshape(-1, 2)
    take_second = value[:, 1] < value[:, 0]
    return torch.where(take_second[:, None, None], second, first)


def order_rule(nll: torch.Tensor, num_snapshots: int, order_penalty: float,
               log_prior: torch.Tensor | None, prior_weight: float) -> torch.Tensor:
    """K̂ ``[B]`` in 1..K from the NLLs ``[B, K]`` of the k = 1..K fits (lower criterion wins)."""
    criterion = bic(nll, num_snapshots, order_penalty)
    if log_prior is not None and prior_weight > 0:
        criterion = criterion - 2.0 * prior_weight * log_prior.to(nll.device, nll.dtype)
    return criterion.argmin(-1) + 1


@torch.no_grad()
def ml_refine_select(starts: Sequence[torch.Tensor | None], y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                     snr_db, system: SystemConfig, iterations: int = 4, order_penalty: float = 1.0,
                     log_prior: torch.Tensor | None = None, prior_weight: float = 1.0,
                     num_sources: torch.Tensor | None = None, damping: float = 1e-3,
                     grid_start_below_db: float = 10.0) -> Estimates:
    """Fit k = 1..K_max sources from ``starts[k-1] [B, C_k ≥ k, 3]`` and pick K̂ by the order rule.

    ``log_prior [B, K_max]``: log p(k | x) of the K head (None: no prior). ``num_sources [B]``
    (the true K) skips the rule and fits only the counts it holds; the starts of other counts may be None.
    Scenes with ``snr_db < grid_start_below_db`` also start every k from B4's sequential search
    (their fit with k − 1 held, the k-th source at its grid maximum), where that beats the best
    subset. Returns :class:`Estimates` with K_max slots inside the configured (φ, θ, r) box, on
    the device of ``y``.
    """
    kmax, B, device = system.max_sources, y.shape[0], y.device
    if len(starts) != kmax:
        raise ValueError(f"starts: one entry per k = 1..{kmax} expected, got {len(starts)}")
    if num_sources is not None:
        num_sources = validate_num_sources(num_sources, B, kmax, device)
    counts = range(1, kmax + 1) if num_sources is None else sorted(set(num_sources.tolist()))
    for k, s in enumerate(starts, start=1):
        if s is None and k in counts:
            raise ValueError(f"starts[{k - 1}]: None, but k = {k} must be fitted")
        if s is not None and (s.ndim != 3 or s.shape[0] != B or s.shape[1] < k or s.shape[2] != 3):
            raise ValueError(f"starts[{k - 1}]: expected [B={B}, >= {k}, 3], got {tuple(s.shape)}")
    if log_prior is not None and tuple(log_prior.shape) != (B, kmax):
        raise ValueError(f"log_prior: expected [{B}, {kmax}], got {tuple(log_prior.shape)}")
    for key, value in (("iterations", iterations), ("order_penalty", order_penalty), ("prior_weight", prior_weight)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{key} must be >= 0, got {value}")
    if math.isnan(grid_start_below_db):
        raise ValueError("grid_start_below_db must be a number (dB, ±inf allowed), got nan")
    meas = measurements(system, y, H, codes, snr_db)
    low = (check_shapes(system, y, H, codes, snr_db) < grid_start_below_db).nonzero()[:, 0]
    meas_low = meas.select(low)
    # B4's sequential start for k holds the low-SNR scenes' fit with k − 1, so those need every smaller k.
    needed = range(1, max(counts) + 1) if low.numel() else counts
    held = torch.zeros(low.numel(), 0, 3, dtype=torch.float64, device=device)
    held_powers = held[..., 0]
    nll = torch.full((B, kmax), math.inf, dtype=torch.float64, device=device)
    fitted = torch.zeros(B, kmax, kmax, 3, dtype=torch.float64, device=device)
    for k in needed:
        if k not in counts:  # only the low-SNR scenes' fit, to hold for k + 1
            x = _sequential_start(system, meas_low, held, held_powers)
            held, _, held_powers = refine(system, meas_low, x, _everyone(x), int(iterations), damping)
            continue
        x = best_subset(system, meas, starts[k - 1].to(device, torch.float64), k)
        if low.numel():
            x[low] = _better_of(system, meas_low, x[low], _sequential_start(system, meas_low, held, held_powers))
        x, nll[:, k - 1], powers = refine(system, meas, x, _everyone(x), int(iterations), damping)
        fitted[:, k - 1, :k] = x
        held, held_powers = x[low], powers[low]
    if num_sources is None:
        num_sources = order_rule(nll, system.num_snapshots, order_penalty, log_prior, prior_weight)
    positions = fitted[torch.arange(B, device=device), num_sources - 1]  # [B, K_max, 3]
    valid = torch.arange(kmax, device=device)[None, :] < num_sources[:, None]
    return Estimates.from_positions(positions, valid, num_sources=num_sources)
