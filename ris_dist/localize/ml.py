"""B4: stochastic maximum likelihood on the exact per-snapshot model, and ML refinement of any estimate.

system_model.md ("Baselines", B4 and "Refinement"). The likelihood and the power estimate are in
:mod:`.ml_likelihood`, the grid search in :mod:`.ml_search`, the local refinement in
:mod:`.ml_refine`. Public API:

- :func:`ml_localize`: grid search for the first source, then a sequential search (each new
  source on the grid with the others held) and a joint refinement, then ``ap_cycles`` rounds of
  alternating projection (each source re-searched with the others held at their refined
  positions, kept if the likelihood improves), each followed by a joint refinement, for
  k = 1, 2, … in turn; K̂ by the likelihood order rule or the given (true) K. The search
  re-searches refined rather than grid positions because at high SNR a held source's grid
  error leaves a residual far above the noise, large enough to hide a weak source.
- :func:`ml_refine`: a few refinement iterations from given estimates (e.g. the learned
  pipeline's MUSIC peaks and K̂), keeping their count.

Order rule (BIC/MDL on the ML fits): K̂ = argmin_k 2·NLL_k + ``order_penalty``·4k·log L. Each
source has 4 real parameters (φ, θ, r, power); σ² is fixed by the SNR and costs nothing;
``order_penalty = 1`` is the BIC (= MDL) with the L snapshots as the sample count.

Everything runs on the device of ``y``, batched over scenes; only the source counts (to size the
loop over k) and the input checks read values back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import SystemConfig
from .estimates import Estimates
from .ml_likelihood import Measurements, concentrated_nll, measurements
from .ml_refine import prior_box, refine
from .ml_search import search_new_source
from .subspace import validate_num_sources

PARAMS_PER_SOURCE = 4
"""Real parameters per source in the order rule: φ, θ, r and the power."""


@dataclass(frozen=True)
class MLConfig:
    """Knobs of the ML search and refinement; the defaults are the ones the yardstick was measured with."""

    grid_spacing_cells: float = 0.3
    """Step of the (u, w, 1/r) search grid in resolution cells (the MUSIC coarse grid's)."""
    min_points_per_axis: int = 5
    """Lower bound on grid points per axis (the 1/r axis of small arrays spans about one cell)."""
    ap_cycles: int = 1
    """Alternating-projection rounds over all k sources after the first refinement (k ≥ 2), each refined again."""
    refine_iterations: int = 6
    """Fisher-scoring iterations of the joint refinement of every k-source fit."""
    refine_damping: float = 1e-3
    """Levenberg–Marquardt damping λ added to the Jacobi-scaled Fisher matrix."""
    order_penalty: float = 1.0
    """Multiplier of the BIC penalty (#params)·log L in the order rule; 1 is the BIC/MDL."""
    chunk_elements: int = 1 << 22
    """Memory bound of the grid search: complex entries of its largest intermediate per chunk."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.grid_spacing_cells) and self.grid_spacing_cells > 0):
            raise ValueError(f"grid_spacing_cells must be > 0, got {self.grid_spacing_cells}")
        if self.min_points_per_axis < 2:
            raise ValueError(f"min_points_per_axis must be >= 2, got {self.min_points_per_axis}")
        for key in ("ap_cycles", "refine_iterations"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not (math.isfinite(self.refine_damping) and self.refine_damping > 0):
            raise ValueError(f"refine_damping must be > 0, got {self.refine_damping}")
        if not (math.isfinite(self.order_penalty) and self.order_penalty >= 0):
            raise ValueError(f"order_penalty must be >= 0, got {self.order_penalty}")
        if self.chunk_elements < 1:
            raise ValueError(f"chunk_elements must be >= 1, got {self.chunk_elements}")


@dataclass
class MLFit:
    """The ML fit with k sources for every scene of a batch."""

    positions: torch.Tensor  # [B, k, 3] float64 (φ deg, θ deg, r m)
    powers: torch.Tensor  # [B, k] linear
    nll: torch.Tensor  # [B]


def next_source_on_grid(system: SystemConfig, meas: Measurements, held: torch.Tensor, held_powers: torch.Tensor,
                        config: MLConfig) -> torch.Tensor:
    """``[B, 3]``: the grid maximum of the likelihood for one more source, ``held [B, k, 3]`` fixed
    (:func:`~ris_dist.localize.ml_search.search_new_source` on ``config``'s grid)."""
    return search_new_source(system, meas, held, held_powers, config.grid_spacing_cells,
                             config.min_points_per_axis, config.chunk_elements)


def _alternate(system: SystemConfig, meas: Measurements, x: torch.Tensor, config: MLConfig) -> torch.Tensor:
    """One alternating-projection round: re-search each source with the others held."""
    k = x.shape[1]
    everyone = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    current, _ = concentrated_nll(system, meas, x, everyone)
    for j in range(k):
        others = torch.cat([x[:, :j], x[:, j + 1:]], 1)
        _, others_powers = concentrated_nll(system, meas, others, everyone[:, 1:])
        trial = x.clone()
        trial[:, j] = next_source_on_grid(system, meas, others, others_powers, config)
        value, _ = concentrated_nll(system, meas, trial, everyone)
        better = value < current
        x = torch.where(better[:, None, None], trial, x)
        current = torch.where(better, value, current)
    return x


def ml_fits(system: SystemConfig, meas: Measurements, max_sources: int, config: MLConfig) -> list[MLFit]:
    """The ML fits with k = 1..``max_sources`` sources, each grown from the one before."""
    B = len(meas)
    device = meas.y.device
    held = torch.zeros(B, 0, 3, dtype=torch.float64, device=device)
    held_powers = torch.zeros(B, 0, dtype=torch.float64, device=device)
    fits = []
    for k in range(1, max_sources + 1):
        new = next_source_on_grid(system, meas, held, held_powers, config)
        x = torch.cat([held, new[:, None].to(torch.float64)], 1)
        everyone = torch.ones(B, k, dtype=torch.bool, device=device)
        x, nll, powers = refine(system, meas, x, everyone, config.refine_iterations, config.refine_damping)
        if k > 1:
            for _ in range(config.ap_cycles):
                x = _alternate(system, meas, x, config)
                x, nll, powers = refine(system, meas, x, everyone, config.refine_iterations, config.refine_damping)
        fits.append(MLFit(positions=x, powers=powers, nll=nll))
        held, held_powers = x, powers
    return fits


def bic(nll: torch.Tensor, num_snapshots: int, penalty: float) -> torch.Tensor:
    """``[B, K]``: 2·NLL_k + penalty·4k·log L for the NLLs ``[B, K]`` of k = 1..K fits (lower is better)."""
    k = torch.arange(1, nll.shape[-1] + 1, dtype=nll.dtype, device=nll.device)
    return 2.0 * nll + penalty * PARAMS_PER_SOURCE * k * math.log(num_snapshots)


def order_criterion(fits: list[MLFit], num_snapshots: int, penalty: float) -> torch.Tensor:
    """``[B, len(fits)]``: :func:`bic` of the fits with k = 1, 2, … sources."""
    return bic(torch.stack([f.nll for f in fits], -1), num_snapshots, penalty)


@torch.no_grad()
def ml_localize(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db, system: SystemConfig,
                num_sources: torch.Tensor | None = None, config: MLConfig | None = None,
                fits: list[MLFit] | None = None) -> Estimates:
    """B4 on a batch: ``y [B, L, M]``, ``H [B, M, N]``, ``codes [B, L, N]`` complex, ``snr_db [B]``.

    ``num_sources [B]`` (the true K) skips the order rule. ``fits`` from :func:`ml_fit_batch` on
    the same measurements (enough of them: K_max, or the largest given K) skip the search, so
    own-K̂ and oracle-K estimates can share one. Returns :class:`Estimates` with K_max slots on
    the device of ``y``. Raises a one-line ``ValueError`` naming the argument for non-finite,
    mis-shaped or non-unit-modulus inputs.
    """
    config = config or MLConfig()
    B, kmax, device = y.shape[0], system.max_sources, y.device
    if num_sources is not None:
        num_sources = validate_num_sources(num_sources, B, kmax, device)
    top = kmax if num_sources is None else int(num_sources.max())
    if fits is None:
        fits = ml_fit_batch(y, H, codes, snr_db, system, top, config)
    elif len(fits) < top:
        raise ValueError(f"fits: {len(fits)} given, {top} needed")
    if num_sources is None:
        num_sources = order_criterion(fits, system.num_snapshots, config.order_penalty).argmin(-1) + 1
    positions = torch.zeros(B, kmax, 3, dtype=torch.float64, device=device)
    for k, fit in enumerate(fits[:top], start=1):
        pick = (num_sources == k)[:, None, None]
        positions[:, :k] = torch.where(pick, fit.positions, positions[:, :k])
    valid = torch.arange(kmax, device=device)[None, :] < num_sources[:, None]
    return Estimates.from_positions(positions, valid)


@torch.no_grad()
def ml_fit_batch(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db, system: SystemConfig,
                 max_sources: int, config: MLConfig | None = None) -> list[MLFit]:
    """The checked inputs' ML fits with k = 1..``max_sources`` (see :func:`ml_fits`)."""
    if not 1 <= max_sources <= system.max_sources:
        raise ValueError(f"max_sources must be in 1..{system.max_sources}, got {max_sources}")
    return ml_fits(system, measurements(system, y, H, codes, snr_db), max_sources, config or MLConfig())


@torch.no_grad()
def ml_refine(estimates: Estimates, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db,
              system: SystemConfig, iterations: int = 4, config: MLConfig | None = None) -> Estimates:
    """``iterations`` joint refinement steps of the ML likelihood from ``estimates`` (its K̂ kept).

    Slots that are not valid stay empty. The result lies in the configured (φ, θ, r) box.
    """
    config = config or MLConfig()
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    meas = measurements(system, y, H, codes, snr_db)
    if len(estimates) != len(meas):
        raise ValueError(f"estimates: {len(estimates)} scenes for a batch of {len(meas)}")
    lo, hi = prior_box(system, y.device)
    valid = estimates.valid.to(y.device)
    start = torch.stack([estimates.azimuth_deg, estimates.elevation_deg, estimates.range_m], -1).to(y.device,
                                                                                                     torch.float64)
    start = torch.where(valid[..., None], start, (lo + hi) / 2)  # empty slots: any finite position
    x, _, _ = refine(system, meas, start, valid, iterations, config.refine_damping)
    return Estimates.from_positions(x, valid, num_sources=estimates.num_sources.to(y.device))
