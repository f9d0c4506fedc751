"""Batched near-field MUSIC (system_model.md, "Localization"): the public entry points."""

from __future__ import annotations

from typing import Literal

import torch

from ..config import SystemConfig
from ..physics.steering import SteeringModel, steering
from .estimates import Estimates
from .grid import SearchConfig, coarse_grid, uwr_to_angles
from .order import OrderMethod, estimate_order
from .search import coarse_peaks, dense_peaks, refine_peaks, select_distinct
from .subspace import (
    eigen_decomposition,
    points_null_spectrum,
    signal_subspace,
    validate_covariance,
    validate_num_sources,
)

SearchMethod = Literal["coarse_to_fine", "dense"]


def _check_steering_model(steering_model: str) -> None:
    if steering_model not in ("exact", "fresnel"):
        raise ValueError(f"steering_model must be 'exact' or 'fresnel', got {steering_model!r}")


def _check_options(method: str, order_method: str, steering_model: str) -> None:
    if method not in ("coarse_to_fine", "dense"):
        raise ValueError(f"method must be 'coarse_to_fine' or 'dense', got {method!r}")
    if order_method not in ("mdl", "aic"):
        raise ValueError(f"order_method must be 'mdl' or 'aic', got {order_method!r}")
    _check_steering_model(steering_model)


@torch.no_grad()
def localize(R: torch.Tensor, system: SystemConfig, num_sources: torch.Tensor | None = None,
             method: SearchMethod = "coarse_to_fine", order_method: OrderMethod = "mdl",
             steering_model: SteeringModel = "exact", num_snapshots: int | None = None,
             search: SearchConfig | None = None) -> Estimates:
    """Near-field MUSIC on a batch of covariances ``R [B, N, N]``, on R's device.

    ``num_sources``: ``[B]`` integer counts in 1..K_max (oracle or a model's K head), or None
    to estimate K̂ with ``order_method`` ("mdl" or "aic") from the eigenvalues, using
    ``num_snapshots`` (default ``system.num_snapshots``), clipped to 1..K_max.
    ``method``: "coarse_to_fine" (cached coarse grid uniform in (u, w, 1/r), 3-D NMS, the
    K̂ + ``search.extra_candidates`` strongest peaks refined by shrinking stencils with
    quadratic-fit steps to well below 0.01 cell, then the K̂ best distinct ones) or "dense"
    (one fine grid of ``search.dense_spacing_cells``, chunked, same selection, no refinement;
    the benchmark reference). Returns :class:`Estimates` with K_max slots, the strongest peaks
    first, and ``steering_model`` recorded. Raises ``ValueError`` on malformed input.
    """
    _check_options(method, order_method, steering_model)
    search = search or SearchConfig()
    R = validate_covariance(R, system)
    batch, device, kmax = R.shape[0], R.device, system.max_sources
    if num_sources is not None:
        num_sources = validate_num_sources(num_sources, batch, kmax, device)

    eigenvalues, eigenvectors = eigen_decomposition(R)
    if num_sources is None:
        snapshots = system.num_snapshots if num_snapshots is None else int(num_snapshots)
        num_sources = estimate_order(eigenvalues, snapshots, order_method, max_sources=kmax)
    signal = signal_subspace(eigenvectors, num_sources, kmax).to(torch.complex64)
    valid = torch.arange(kmax, device=device)[None, :] < num_sources[:, None]

    # Both methods rank K̂ + extra candidates and keep the K̂ best distinct ones, so they
    # differ only in how finely the spectrum is searched.
    slots = kmax + search.extra_candidates
    active = torch.arange(slots, device=device)[None, :] < (num_sources[:, None] + search.extra_candidates)
    if method == "dense":
        points, null = dense_peaks(system, signal, slots, search, steering_model)
        null = torch.where(active, null, torch.full_like(null, float("inf")))
        positions = _angles(select_distinct(system, points, null, kmax, search.duplicate_cells))
    else:
        positions = _distinct_peaks(system, signal, active, kmax, search, steering_model)
    return Estimates.from_positions(positions, valid, num_sources=num_sources, steering_model=steering_model)


def _angles(peaks_uwr: torch.Tensor) -> torch.Tensor:
    return torch.stack(uwr_to_angles(peaks_uwr), -1)


def _distinct_peaks(system: SystemConfig, signal: torch.Tensor, active: torch.Tensor, count: int,
                    search: SearchConfig, steering_model: SteeringModel) -> torch.Tensor:
    """Coarse-to-fine: the ``count`` best distinct refined peaks ``[B, count, 3]`` (φ, θ, r) of the
    null spectrum of ``signal``, ranked among the coarse grid's ``active.shape[1]`` strongest peaks."""
    cached = coarse_grid(system, search, signal.device, steering_model)
    candidates = coarse_peaks(cached, signal, active.shape[1], search)
    points, null = refine_peaks(system, signal, candidates, active, cached.grid.steps, search, steering_model)
    return _angles(select_distinct(system, points, null, count, search.duplicate_cells))


@torch.no_grad()
def music_candidates(R: torch.Tensor, system: SystemConfig, num_sources: int, count: int,
                     search: SearchConfig | None = None) -> torch.Tensor:
    """The ``count`` best distinct peaks ``[B, count, 3]`` float64 (φ deg, θ deg, r m), best first,
    of the MUSIC spectrum with a ``num_sources``-dimensional signal subspace (coarse-to-fine).

    Start points for a likelihood search: ``count > num_sources`` keeps the runners-up that
    :func:`localize` drops, so a search can pick the best ``num_sources``-subset of them.
    """
    search = search or SearchConfig()
    R = validate_covariance(R, system)
    batch, device = R.shape[0], R.device
    if not 1 <= num_sources <= system.max_sources:
        raise ValueError(f"num_sources must be in 1..{system.max_sources}, got {num_sources}")
    if count < num_sources:
        raise ValueError(f"count must be >= num_sources ({num_sources}), got {count}")
    _, eigenvectors = eigen_decomposition(R)
    k = torch.full((batch,), num_sources, dtype=torch.int64, device=device)
    signal = signal_subspace(eigenvectors, k, system.max_sources).to(torch.complex64)
    active = torch.ones(batch, count + search.extra_candidates, dtype=torch.bool, device=device)
    return _distinct_peaks(system, signal, active, count, search, "exact").to(torch.float64)


@torch.no_grad()
def music_spectrum(R: torch.Tensor, system: SystemConfig, num_sources: torch.Tensor,
                   azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor, range_m: torch.Tensor,
                   steering_model: SteeringModel = "exact") -> torch.Tensor:
    """MUSIC pseudo-spectrum P(η) = 1 / ‖E_n^H a(η)‖² at given positions, ``[B, ...]`` float64.

    Positions (deg, deg, m) broadcast together; a leading dimension of size B is per scene,
    any other shape ``[...]`` is shared by all scenes. ``num_sources`` is ``[B]`` (or an int) in 1..K_max and fixes E_n.
    Evaluated in float64 via the residual ‖a − E_s E_s^H a‖², without cancellation.
    """
    _check_steering_model(steering_model)
    R = validate_covariance(R, system)
    batch = R.shape[0]
    k = validate_num_sources(num_sources, batch, system.max_sources, R.device)
    az, el, rng = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=torch.float64, device=R.device)
                                            for t in (azimuth_deg, elevation_deg, range_m)))
    shape = az.shape if (az.ndim >= 1 and az.shape[0] == batch) else (batch, *az.shape)
    a = steering(system, az.expand(shape), el.expand(shape), rng.expand(shape), model=steering_model)
    _, eigenvectors = eigen_decomposition(R)
    signal = signal_subspace(eigenvectors, k, system.max_sources)
    null = points_null_spectrum(a.reshape(batch, -1, system.num_elements), signal)
    return (1.0 / null.clamp_min(torch.finfo(torch.float64).tiny)).reshape(shape)


__all__ = ["SearchMethod", "localize", "music_candidates", "music_spectrum"]
