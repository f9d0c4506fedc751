"""Search grids uniform in (u, w, 1/r), their feasibility, and cached grid steering matrices.

MUSIC peaks have a width of about one resolution cell in each of u = cosθ sinφ, w = sinθ
and 1/r (``resolution_cells``), so grids are laid out uniformly in those coordinates
rather than in (φ, θ, r), where a fixed step would oversample some regions and miss others.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..config import SystemConfig
from ..physics.steering import SteeringModel, element_positions, resolution_cells

#: Slack on the feasibility test so that points on a configured bound stay inside after float rounding.
_FEASIBLE_SLACK = 1e-9


@dataclass(frozen=True)
class SearchConfig:
    """Knobs of the MUSIC peak search; the defaults meet the accuracy targets of tests and bench."""

    coarse_spacing_cells: float = 0.3
    """Coarse grid step in resolution cells per axis (sources ≥ 1 cell apart keep separate local maxima)."""
    min_points_per_axis: int = 5
    """Lower bound on grid points along any axis (the 1/r axis of small arrays spans about one cell)."""
    refine_shrink: float = 0.7
    """Stencil half-width ratio between refinement rounds (> 0.5 keeps a peak within half a
    step of the best stencil point inside the next stencil; 0.7 leaves room to walk out of
    a sidelobe basin that a merged coarse peak may start in)."""
    refine_rounds: int = 12
    """Refinement rounds: the last stencil step is coarse step · 0.7¹¹ ≈ 0.006 cell, and the
    quadratic fit on it locates the peak well below that."""
    refine_float64: bool = False
    """Refine in float64 (float32 steering already has ~1e-6 rad of phase error, enough)."""
    extra_candidates: int = 2
    """Coarse peaks refined beyond K̂: after refinement true peaks outrank sidelobes that a
    coarse grid happened to sample better."""
    duplicate_cells: float = 0.5
    """Refined peaks closer than this (resolution cells, (u, w, 1/r) norm) count as one."""
    dense_spacing_cells: float = 0.05
    """Step of the ``dense`` reference grid in resolution cells."""
    chunk_elements: int = 1 << 24
    """Memory bound for dense search: max complex entries of a steering chunk and floats of a spectrum volume."""

    def __post_init__(self) -> None:
        if not (self.coarse_spacing_cells > 0 and self.dense_spacing_cells > 0):
            raise ValueError("grid spacings must be > 0 resolution cells")
        if self.min_points_per_axis < 2:
            raise ValueError(f"min_points_per_axis must be >= 2, got {self.min_points_per_axis}")
        if not 0.5 <= self.refine_shrink < 1.0:
            raise ValueError(f"refine_shrink must be in [0.5, 1), got {self.refine_shrink}")
        if self.extra_candidates < 0 or self.duplicate_cells < 0:
            raise ValueError("extra_candidates and duplicate_cells must be >= 0")
        if self.refine_rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0, got {self.refine_rounds}")


@dataclass(frozen=True)
class Grid:
    """A box grid in (u, w, 1/r), flattened in [U, W, R] order (1/r fastest)."""

    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    """1-D float64 coordinates of u, w and 1/r (1/m)."""
    steps: tuple[float, float, float]
    """Spacing of each axis in its own unit."""
    feasible: torch.Tensor
    """[U·W·R] bool: the point maps to the configured azimuth, elevation and range intervals."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.axes[0]), len(self.axes[1]), len(self.axes[2]))

    def points(self, flat_index: torch.Tensor | None = None) -> torch.Tensor:
        """(u, w, 1/r) ``[G, 3]`` float64 of all points, or of ``flat_index``."""
        U, W, R = self.shape
        idx = torch.arange(U * W * R) if flat_index is None else flat_index.cpu()
        iu, rem = idx // (W * R), idx % (W * R)
        iw, ir = rem // R, rem % R
        return torch.stack([self.axes[0][iu], self.axes[1][iw], self.axes[2][ir]], dim=-1)


def coordinate_bounds(system: SystemConfig) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Bounding box of the configured region in (u, w, 1/r)."""
    phi_lo, phi_hi = (math.radians(a) for a in system.azimuth_range_deg)
    th_lo, th_hi = (math.radians(a) for a in system.elevation_range_deg)
    # u = cosθ sinφ is monotone in φ and largest in |u| where |θ| is smallest.
    cos_max = 1.0 if th_lo <= 0.0 <= th_hi else max(math.cos(th_lo), math.cos(th_hi))
    cos_min = min(math.cos(th_lo), math.cos(th_hi))
    u_candidates = [c * math.sin(p) for c in (cos_max, cos_min) for p in (phi_lo, phi_hi)]
    r_lo, r_hi = system.range_range_m
    return ((min(u_candidates), max(u_candidates)),
            (math.sin(th_lo), math.sin(th_hi)),
            (1.0 / r_hi, 1.0 / r_lo))


def uwr_to_angles(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, w, 1/r) ``[..., 3]`` → (azimuth_deg, elevation_deg, range_m); NaN where u² + w² > 1."""
    u, w, inv_r = points.unbind(-1)
    elevation = torch.asin(w.clamp(-1.0, 1.0))
    azimuth = torch.asin(u / torch.cos(elevation))
    return torch.rad2deg(azimuth), torch.rad2deg(elevation), 1.0 / inv_r


def is_feasible(system: SystemConfig, points: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: (u, w, 1/r) maps into the configured azimuth, elevation and range intervals.

    Trig-free: w = sinθ and sinφ = u / sqrt(1 − w²) are monotone in θ and φ on [−90°, 90°].
    """
    u, w, inv_r = points.unbind(-1)
    (a_lo, a_hi), (e_lo, e_hi) = system.azimuth_range_deg, system.elevation_range_deg
    r_lo, r_hi = system.range_range_m
    slack = _FEASIBLE_SLACK
    cos_theta = torch.sqrt((1.0 - w * w).clamp_min(0.0))
    return ((w >= math.sin(math.radians(e_lo)) - slack) & (w <= math.sin(math.radians(e_hi)) + slack)
            & (u >= math.sin(math.radians(a_lo)) * cos_theta - slack)
            & (u <= math.sin(math.radians(a_hi)) * cos_theta + slack)
            & (inv_r >= (1.0 - slack) / r_hi) & (inv_r <= (1.0 + slack) / r_lo))


def is_physical(points: torch.Tensor) -> torch.Tensor:
    """``[...]`` bool: (u, w, 1/r) is a point in front of the array (u² + w² ≤ 1, 1/r ≥ 0)."""
    u, w, inv_r = points.unbind(-1)
    return (u * u + w * w <= 1.0) & (inv_r >= 0.0)


def points_steering(system: SystemConfig, points: torch.Tensor, model: SteeringModel,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unit-norm steering vectors ``[..., N]`` at (u, w, 1/r) ``points``, computed in ``dtype``.

    The same path difference as ``physics.steering.path_difference``, written in (u, w, 1/r)
    so the search needs no trigonometry and no 1/(1/r): with s = 1/r and
    x = s·ρ² − 2(h u + v w), exact: ‖q − p‖ − r = x / (sqrt(1 + s·x) + 1);
    Fresnel: −(h u + v w) + s·(ρ² − (h u + v w)²)/2. tests/test_localize.py checks the two agree.
    """
    if model not in ("exact", "fresnel"):
        raise ValueError(f"steering model must be 'exact' or 'fresnel', got {model!r}")
    h, v = element_positions(system, device=points.device, dtype=dtype)
    pts = points.to(dtype)
    u, w, s = (pts[..., i, None] for i in range(3))
    proj = h * u + v * w
    rho2 = h * h + v * v
    if model == "exact":
        x = s * rho2 - 2.0 * proj
        delta = x / (torch.sqrt(1.0 + s * x) + 1.0)
    else:
        delta = -proj + 0.5 * s * (rho2 - proj * proj)
    phase = (-2.0 * math.pi / system.wavelength_m) * delta
    scale = 1.0 / math.sqrt(system.num_elements)
    return torch.complex(torch.cos(phase) * scale, torch.sin(phase) * scale)


def clamp_to_box(system: SystemConfig, points: torch.Tensor) -> torch.Tensor:
    """Clip (u, w, 1/r) to the bounding box (keeps zoom grids from leaving the search region)."""
    bounds = coordinate_bounds(system)
    lo = torch.tensor([b[0] for b in bounds], dtype=points.dtype, device=points.device)
    hi = torch.tensor([b[1] for b in bounds], dtype=points.dtype, device=points.device)
    return torch.maximum(torch.minimum(points, hi), lo)


@functools.lru_cache(maxsize=16)
def build_grid(system: SystemConfig, spacing_cells: float, min_points_per_axis: int) -> Grid:
    """Box grid over the configured region, step ≤ ``spacing_cells`` resolution cells per axis."""
    axes, steps = [], []
    for (lo, hi), cell in zip(coordinate_bounds(system), resolution_cells(system)):
        count = max(min_points_per_axis, math.ceil((hi - lo) / (spacing_cells * cell)) + 1)
        axes.append(torch.linspace(lo, hi, count, dtype=torch.float64))
        steps.append((hi - lo) / (count - 1))
    grid = Grid(axes=tuple(axes), steps=tuple(steps), feasible=torch.zeros(0, dtype=torch.bool))
    feasible = is_feasible(system, grid.points())
    return Grid(axes=grid.axes, steps=grid.steps, feasible=feasible)


@dataclass(frozen=True)
class CachedGrid:
    """A grid with the steering matrix of its feasible points on one device."""

    grid: Grid
    feasible_index: torch.Tensor
    """[G_f] int64 flat indices of the feasible points (on the device)."""
    steering: torch.Tensor
    """[G_f, N] complex64 steering vectors of the feasible points (on the device)."""


@functools.lru_cache(maxsize=16)
def _cached_grid(system: SystemConfig, spacing_cells: float, min_points_per_axis: int,
                 device: str, model: SteeringModel) -> CachedGrid:
    grid = build_grid(system, spacing_cells, min_points_per_axis)
    index = torch.nonzero(grid.feasible)[:, 0]
    matrix = points_steering(system, grid.points(index), model).to(device)
    return CachedGrid(grid=grid, feasible_index=index.to(device), steering=matrix)


def coarse_grid(system: SystemConfig, config: SearchConfig, device: torch.device,
                model: SteeringModel) -> CachedGrid:
    """The coarse grid and its steering matrix, cached per (system, spacing, device, steering model)."""
    return _cached_grid(system, config.coarse_spacing_cells, config.min_points_per_axis, str(device), model)
