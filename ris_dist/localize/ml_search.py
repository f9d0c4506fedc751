"""Global search of the ML likelihood on a (u, w, 1/r) grid: one new source with the others held fixed.

For every grid point η and snapshot l the only new quantities are ``b_l(η) = G_l a(η)``; stacking
``H ⊙ c_l`` of all scenes and snapshots as the rows of one ``[B·L·M, N]`` matrix makes them a
single GEMM with the grid's cached steering matrix (complex64: the grid only has to rank
points, the refinement works in float64). The powers at a grid point are a cheap stand-in for
the joint fit of :func:`~ris_dist.localize.ml_likelihood.estimate_powers`: the held sources keep
theirs, the new one gets the non-negative least-squares step of its own power given them, and
all are scaled to the SNR's energy. (For the first source that is exactly the joint fit.)
"""

from __future__ import annotations

import torch

from ..config import SystemConfig
from .grid import SearchConfig, coarse_grid, uwr_to_angles
from .ml_likelihood import Measurements, coded_steering, negative_log_likelihood, projections, source_steering


def _grid_powers(meas: Measurements, g_new: torch.Tensor, z_new: torch.Tensor, cross: torch.Tensor,
                 held_powers: torch.Tensor, held_energy: torch.Tensor) -> torch.Tensor:
    """Powers ``[b, G, k]`` (held first, the new source last) at every grid point."""
    sigma2 = meas.noise_var[:, None, None]
    explained = (held_powers[:, None, None, :] * (cross.real.square() + cross.imag.square())).sum(-1)
    numerator = (z_new.real.square() + z_new.imag.square() - sigma2 * g_new - explained).sum(-1)  # [b, G]
    p_new = numerator.clamp_min(0.0) / g_new.square().sum(-1).clamp_min(torch.finfo(g_new.dtype).tiny)
    energy_new = g_new.sum(-1)
    total = (held_powers * held_energy).sum(-1)[:, None] + p_new * energy_new
    # A point whose fitted power is 0 with nothing held (the first source) still gets the SNR's energy.
    first = held_powers.shape[-1] == 0
    if first:
        p_new = torch.ones_like(p_new)
        total = energy_new
    scale = meas.signal_energy[:, None] / total.clamp_min(torch.finfo(total.dtype).tiny)
    held = held_powers[:, None, :].expand(-1, p_new.shape[1], -1)
    return torch.cat([held, p_new[..., None]], -1) * scale[..., None]


def search_new_source(system: SystemConfig, meas: Measurements, held: torch.Tensor, held_powers: torch.Tensor,
                      spacing_cells: float, min_points_per_axis: int, chunk_elements: int) -> torch.Tensor:
    """Best grid position ``[B, 3]`` (φ deg, θ deg, r m) of one more source given ``held [B, k−1, 3]``
    with powers ``held_powers [B, k−1]``, by the likelihood of all k together."""
    cached = coarse_grid(system, SearchConfig(coarse_spacing_cells=spacing_cells,
                                              min_points_per_axis=min_points_per_axis), meas.y.device, "exact")
    grid_a = cached.steering  # [G, N] complex64
    G, N = grid_a.shape
    B, L, M = meas.y.shape
    k = held.shape[1] + 1
    a_held = source_steering(system, held)
    gram_held, z_held = projections(meas, a_held)  # [B, L, k−1, k−1], [B, L, k−1]
    b_held = coded_steering(meas, a_held).mT  # [B, L, M, k−1]
    held_energy = torch.diagonal(gram_held, dim1=-2, dim2=-1).real.sum(1)
    y_single, b_held_single = meas.y.to(torch.complex64), b_held.to(torch.complex64)
    rows = (meas.codes[:, :, None, :] * meas.H[:, None, :, :]).to(torch.complex64)  # H ⊙ c_l  [B, L, M, N]
    # Chunks bound the largest intermediate, the [b, g, L, k, k] Grams.
    per_point = L * max(M, k * k)
    best_value = torch.full((B,), float("inf"), dtype=torch.float64, device=meas.y.device)
    best_index = torch.zeros(B, dtype=torch.int64, device=meas.y.device)
    points_per_chunk = max(1, chunk_elements // per_point)
    scenes_per_chunk = max(1, min(B, chunk_elements // (per_point * min(G, points_per_chunk))))
    for s0 in range(0, B, scenes_per_chunk):
        sc = slice(s0, s0 + scenes_per_chunk)
        part = meas.select(sc)
        b = part.y.shape[0]
        flat = rows[sc].reshape(b * L * M, N)
        for g0 in range(0, G, points_per_chunk):
            a = grid_a[g0:g0 + points_per_chunk]
            bg = (a @ flat.T).reshape(-1, b, L, M).permute(1, 0, 2, 3)  # [b, g, L, M] complex64
            g_new = (bg.real.square().sum(-1) + bg.imag.square().sum(-1)).to(torch.float64)  # [b, g, L]
            z_new = torch.einsum("bglm,blm->bgl", bg.conj(), y_single[sc]).to(torch.complex128)
            cross = torch.einsum("bglm,blms->bgls", bg.conj(), b_held_single[sc]).to(torch.complex128)  # b_new^H b_held
            powers = _grid_powers(part, g_new, z_new, cross, held_powers[sc], held_energy[sc])
            npts = bg.shape[1]
            gram = torch.empty(b, npts, L, k, k, dtype=torch.complex128, device=bg.device)
            gram[..., :k - 1, :k - 1] = gram_held[sc][:, None]
            gram[..., k - 1, :k - 1] = cross
            gram[..., :k - 1, k - 1] = cross.conj()
            gram[..., k - 1, k - 1] = g_new
            z = torch.cat([z_held[sc][:, None].expand(-1, npts, -1, -1), z_new[..., None]], -1)
            nll = negative_log_likelihood(part.noise_var.repeat_interleave(npts), part.y_norm2.repeat_interleave(npts, 0),
                                          M, gram.reshape(b * npts, L, k, k), z.reshape(b * npts, L, k),
                                          powers.reshape(b * npts, k)).reshape(b, npts)
            value, index = nll.min(-1)
            better = value < best_value[sc]
            best_value[sc] = torch.where(better, value, best_value[sc])
            best_index[sc] = torch.where(better, index + g0, best_index[sc])
    points = cached.grid.points(cached.feasible_index[best_index].cpu()).to(meas.y.device)
    azimuth, elevation, range_m = uwr_to_angles(points)
    return torch.stack([azimuth, elevation, range_m], -1)
