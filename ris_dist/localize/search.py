"""Peak search on the MUSIC spectrum: grid NMS + top candidates, shrinking-stencil refinement
(zoom with quadratic-fit Newton steps), distinct-peak selection, and the dense reference.

Everything is batched over scenes; Python loops run only over refinement rounds and memory chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import SystemConfig
from ..physics.steering import SteeringModel, resolution_cells
from .grid import (
    CachedGrid,
    Grid,
    SearchConfig,
    build_grid,
    clamp_to_box,
    is_feasible,
    is_physical,
    points_steering,
)
from .subspace import grid_null_spectrum, points_null_spectrum


def pick_peaks(spectrum: torch.Tensor, shape: tuple[int, int, int], slots: int) -> torch.Tensor:
    """Flat grid indices ``[B, slots]`` of the strongest 3-D local maxima of each scene.

    ``spectrum`` is ``[B, U·W·R]`` with −inf at infeasible points. If a scene has fewer local
    maxima than ``slots`` (merged peaks), its remaining slots take the strongest non-peak points.
    """
    batch = spectrum.shape[0]
    volume = spectrum.reshape(batch, 1, *shape)
    pooled = F.max_pool3d(volume, kernel_size=3, stride=1, padding=1).reshape(batch, -1)
    is_peak = (spectrum >= pooled) & torch.isfinite(spectrum)
    neg_inf = torch.full_like(spectrum, float("-inf"))
    k = min(slots, spectrum.shape[1])
    peak_values, peak_index = torch.topk(torch.where(is_peak, spectrum, neg_inf), k, dim=1)
    _, other_index = torch.topk(torch.where(is_peak, neg_inf, spectrum), k, dim=1)
    num_peaks = torch.isfinite(peak_values).sum(1, keepdim=True)
    slot = torch.arange(k, device=spectrum.device)[None, :]
    fallback = other_index.gather(1, (slot - num_peaks).clamp_min(0))
    index = torch.where(slot < num_peaks, peak_index, fallback)
    if k < slots:
        index = torch.cat([index, index[:, :1].expand(-1, slots - k)], dim=1)
    return index


def coarse_peaks(cached: CachedGrid, signal: torch.Tensor, slots: int, config: SearchConfig) -> torch.Tensor:
    """(u, w, 1/r) ``[B, slots, 3]`` float64 of the strongest coarse-grid peaks, best first."""
    grid = cached.grid
    batch, _, k = signal.shape
    box = grid.feasible.numel()
    rows = max(1, config.chunk_elements // max(1, cached.steering.shape[0] * k))
    picked = []
    for start in range(0, batch, rows):
        null = grid_null_spectrum(cached.steering, signal[start:start + rows])
        spectrum = torch.full((null.shape[0], box), float("-inf"), dtype=null.dtype, device=null.device)
        spectrum[:, cached.feasible_index] = 1.0 / null
        picked.append(pick_peaks(spectrum, grid.shape, slots))
    index = torch.cat(picked)
    return grid.points(index.reshape(-1)).reshape(batch, slots, 3).to(signal.device)


def _stencil(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """3×3×3 offsets in [−1, 1]³ ``[27, 3]`` and the least-squares map ``[10, 27]`` from values
    on them to a full quadratic (1, x, y, z, x², y², z², xy, xz, yz)."""
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    offsets = torch.stack(torch.meshgrid(t, t, t, indexing="ij"), dim=-1).reshape(-1, 3)
    x, y, z = offsets.unbind(-1)
    design = torch.stack([torch.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], dim=-1)
    return offsets.to(device), torch.linalg.pinv(design).to(device)


def _newton_step(values: torch.Tensor, fit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimizer of the quadratic fitted to stencil values ``[V, 27]``, in stencil units ``[V, 3]``,
    and whether to trust it (positive-definite curvature, at most 1.5 half-widths away)."""
    c = values @ fit.T  # [V, 10]
    gradient = c[:, 1:4]
    hessian = torch.stack([
        torch.stack([2 * c[:, 4], c[:, 7], c[:, 8]], -1),
        torch.stack([c[:, 7], 2 * c[:, 5], c[:, 9]], -1),
        torch.stack([c[:, 8], c[:, 9], 2 * c[:, 6]], -1),
    ], dim=-2)
    _, info = torch.linalg.cholesky_ex(hessian)
    positive = info == 0
    eye = torch.eye(3, dtype=hessian.dtype, device=hessian.device)
    safe = torch.where(positive[:, None, None], hessian, eye)
    step = -torch.linalg.solve(safe, gradient.unsqueeze(-1)).squeeze(-1)
    trusted = positive & torch.isfinite(step).all(-1) & (step.abs() <= 1.5).all(-1)
    return step, trusted


def refine_peaks(system: SystemConfig, signal: torch.Tensor, centres: torch.Tensor, active: torch.Tensor,
                 half_width: tuple[float, float, float], config: SearchConfig,
                 model: SteeringModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine peaks ``[B, S, 3]`` in (u, w, 1/r); returns them and their null ``[B, S]`` (inf if inactive).

    Only ``active`` slots are refined, all scenes × peaks as one batch. Each round evaluates a
    3×3×3 stencil of half-width h around every peak; the next centre is the minimizer of a
    quadratic fitted to the stencil when that is trustworthy (near-field peaks are tilted
    ellipsoids in (u, w, 1/r), so axis-aligned zooming alone drifts), else the best point so
    far. h shrinks by ``refine_shrink`` per round; the best feasible point ever evaluated is
    returned.
    """
    owner, slot = torch.nonzero(active, as_tuple=True)
    points = centres[owner, slot]  # [V, 3]
    es = signal[owner]  # [V, N, K]
    offsets, fit = _stencil(centres.device)
    half = torch.tensor(half_width, dtype=torch.float64, device=centres.device).expand(points.shape[0], 3)
    dtype = torch.float64 if config.refine_float64 else torch.float32
    rows = max(1, config.chunk_elements // (offsets.shape[0] * system.num_elements))
    best_points = points
    best_null = torch.full(points.shape[:1], float("inf"), dtype=torch.float64, device=points.device)
    for round_index in range(config.refine_rounds + 1):
        # The last pass only scores the final centre.
        stencil = offsets if round_index < config.refine_rounds else offsets[13:14]
        candidates = points[:, None, :] + stencil * half[:, None, :]  # [V, C, 3]
        # Stencil points outside the search region still inform the quadratic fit (clamping them
        # would bend the stencil and bias the fit); only feasible points can become the answer.
        physical = is_physical(candidates)
        safe = torch.where(physical[..., None], candidates, points[:, None, :])
        null = torch.empty(candidates.shape[:2], dtype=torch.float64, device=points.device)
        for start in range(0, points.shape[0], rows):
            part = slice(start, start + rows)
            rows_steering = points_steering(system, safe[part], model, dtype)
            null[part] = points_null_spectrum(rows_steering, es[part]).to(torch.float64)
        null = torch.where(physical, null, torch.full_like(null, float("inf")))
        feasible_null = torch.where(is_feasible(system, candidates), null, torch.full_like(null, float("inf")))
        value, best = feasible_null.min(-1)
        better = value < best_null
        best_null = torch.where(better, value, best_null)
        best_points = torch.where(better[:, None], candidates[torch.arange(len(best), device=best.device), best], best_points)
        if round_index == config.refine_rounds:
            break
        step, trusted = _newton_step(null, fit)
        trusted &= torch.isfinite(null).all(-1)
        newton = clamp_to_box(system, points + step * half)
        points = torch.where(trusted[:, None], newton, best_points)
        half = half * config.refine_shrink
    refined = centres.clone()
    refined[owner, slot] = best_points
    null_out = torch.full(active.shape, float("inf"), dtype=torch.float64, device=centres.device)
    null_out[owner, slot] = best_null
    return refined, null_out


def select_distinct(system: SystemConfig, points: torch.Tensor, null: torch.Tensor, slots: int,
                    min_distance_cells: float) -> torch.Tensor:
    """The ``slots`` best refined peaks ``[B, slots, 3]``, skipping any that lies within
    ``min_distance_cells`` of a better one (two coarse peaks that converged to one source)."""
    cells = torch.tensor(resolution_cells(system), dtype=points.dtype, device=points.device)
    order = torch.argsort(null, dim=1)
    points = points.gather(1, order[..., None].expand(-1, -1, 3))
    null = null.gather(1, order)
    scaled = points / cells
    distance = torch.linalg.vector_norm(scaled[:, :, None] - scaled[:, None, :], dim=-1)  # [B, S, S]
    earlier = torch.ones_like(distance, dtype=torch.bool).tril(-1)  # [i, j]: j ranks before i
    duplicate = ((distance < min_distance_cells) & earlier).any(-1)
    rank = torch.where(duplicate | ~torch.isfinite(null), torch.full_like(null, float("inf")), null)
    # Stable sort keeps the null order among duplicates, which then fill any leftover slots.
    keep = torch.sort(rank, dim=1, stable=True).indices[:, :slots]
    return points.gather(1, keep[..., None].expand(-1, -1, 3))


def dense_peaks(system: SystemConfig, signal: torch.Tensor, slots: int,
                config: SearchConfig, model: SteeringModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Peaks ``[B, slots, 3]`` and their null ``[B, slots]`` on one fine grid (the accuracy
    reference), chunked in memory.

    The grid's steering matrix is too large to keep, so it is rebuilt chunk by chunk for each
    group of scenes; groups are as large as the spectrum-volume budget allows.
    """
    grid: Grid = build_grid(system, config.dense_spacing_cells, config.min_points_per_axis)
    device = signal.device
    batch, n, k = signal.shape
    box = grid.feasible.numel()
    feasible_index = torch.nonzero(grid.feasible)[:, 0]
    scenes_per_pass = max(1, (4 * config.chunk_elements) // box)
    # A chunk holds its steering rows [c, N] and their projections [c, scenes·K].
    points_per_chunk = max(1, config.chunk_elements // max(n, min(batch, scenes_per_pass) * k))
    picked, values = [], []
    for start in range(0, batch, scenes_per_pass):
        part = slice(start, start + scenes_per_pass)
        spectrum = torch.full((signal[part].shape[0], box), float("-inf"), device=device)
        for first in range(0, feasible_index.numel(), points_per_chunk):
            index = feasible_index[first:first + points_per_chunk]
            rows_steering = points_steering(system, grid.points(index).to(device), model)
            spectrum[:, index.to(device)] = 1.0 / grid_null_spectrum(rows_steering, signal[part])
        index = pick_peaks(spectrum, grid.shape, slots)
        picked.append(index)
        values.append(spectrum.gather(1, index))
    index = torch.cat(picked)
    null = 1.0 / torch.cat(values).to(torch.float64)
    return grid.points(index.reshape(-1)).reshape(batch, slots, 3).to(device), null
