"""Steering candidates for the network's element tokens (``model.candidates``).

On ``full`` R_samp's rows carry almost no phase reference per element (docs/full_recipe.md,
"Why full-lite did not fit"); a few candidate steering vectors a(η_j) do. They are found
without parameters, per scene:

1. the Bartlett spectrum Σ_l |a(η)^H x̂_l|² of the back-projected snapshots on a (u, w, 1/r)
   grid, its ``count`` highest local maxima (3×3×3 non-maximum suppression), each moved below
   the grid step by a parabola through its axis neighbours;
2. optionally (``refine_levels`` > 0) axis-wise parabolic steps on the one-source likelihood
   Σ_l |(G_l a)^H y_l|² / ‖G_l a‖² (:func:`~ris_dist.localize.ml_likelihood.one_source_spectrum`).
   With M < N the back-projection weighs directions by ‖G_l a‖², so the Bartlett maximum is
   biased: on one-source ``full`` scenes at 15–20 dB it lies within the success thresholds of
   the source on ~0.48 of scenes, the likelihood's after 4 levels on ~0.92 (docs/full_recipe.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import ConfigError, SystemConfig
from ..localize.grid import SearchConfig, coarse_grid, is_feasible, points_steering
from ..localize.ml_likelihood import one_source_spectrum


class BartlettCandidates(nn.Module):
    """The ``count`` highest local maxima of the Bartlett spectrum on a (u, w, 1/r) grid, refined
    by a parabola and then by ``refine_levels`` likelihood levels (module docstring).

    No parameters; the grid tensors are non-persistent buffers (rebuilt from the system, never
    in a checkpoint) that move with the module.
    """

    def __init__(self, system: SystemConfig, count: int, spacing_cells: float, refine_levels: int = 0) -> None:
        super().__init__()
        self.system, self.count, self.refine_levels = system, count, refine_levels
        cached = coarse_grid(system, SearchConfig(coarse_spacing_cells=spacing_cells), torch.device("cpu"), "exact")
        flat = cached.feasible_index
        if flat.numel() < count:
            raise ConfigError(f"model.candidates={count}: the candidate grid has only {flat.numel()} points")
        U, W, R = cached.grid.shape
        coords = torch.stack([flat // (W * R), (flat % (W * R)) // R, flat % R], -1)
        # lookup[iu+1, iw+1, ir+1] = position in the feasible list, −1 off the grid or infeasible.
        lookup = torch.full((U + 2, W + 2, R + 2), -1, dtype=torch.int64)
        lookup[coords[:, 0] + 1, coords[:, 1] + 1, coords[:, 2] + 1] = torch.arange(flat.numel())
        self.register_buffer("steering", cached.steering.clone(), persistent=False)  # [G, N] unit norm
        self.register_buffer("coords", coords, persistent=False)  # [G, 3] integer grid indices
        self.register_buffer("lookup", lookup, persistent=False)
        # (u, w, 1/r) of the points and the axis steps stay float64 outside the buffers: a blanket
        # module.bfloat16()/half() casts floating buffers (not complex or integer ones), and bf16
        # coordinates would move the candidates by ~1e-2.
        self._points_cpu = cached.grid.points(flat)  # [G, 3]
        self._steps_cpu = torch.tensor(cached.grid.steps, dtype=torch.float64)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def points(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, w, 1/r) [G, 3] of the grid points and the axis steps [3], float64 on ``device``."""
        if device not in self._on_device:
            self._on_device[device] = (self._points_cpu.to(device), self._steps_cpu.to(device))
        return self._on_device[device]

    def spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """[B, G] Σ_l |a(η_g)^H x̂_l|² at every grid point, from x [B, L, N]."""
        return ((x @ self.steering.conj().T).abs() ** 2).sum(1)

    def peaks(self, spectrum: torch.Tensor) -> torch.Tensor:
        """[B, count] grid positions of the highest points, each suppressing its 3×3×3 block."""
        picks = []
        for _ in range(self.count):
            index = spectrum.argmax(-1)
            picks.append(index)
            near = ((self.coords[None, :, :] - self.coords[index][:, None, :]).abs() <= 1).all(-1)
            spectrum = spectrum.masked_fill(near, float("-inf"))
        return torch.stack(picks, -1)

    def _parabola(self, spectrum: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[B, count, 3] sub-step offsets in grid steps, in [−½, ½], of the picked grid points."""
        peak = spectrum.gather(1, index)
        offsets = []
        for axis in range(3):
            unit = torch.zeros(3, dtype=self.coords.dtype, device=spectrum.device)
            unit[axis] = 1
            side = []
            for sign in (-1, 1):
                c = self.coords[index] + sign * unit + 1  # [B, count, 3], +1 for the padding
                nb = self.lookup[c[..., 0], c[..., 1], c[..., 2]]
                side.append((spectrum.gather(1, nb.clamp_min(0)), nb >= 0))
            (lo, lo_ok), (hi, hi_ok) = side
            curvature = lo - 2.0 * peak + hi
            ok = lo_ok & hi_ok & (curvature < 0)
            delta = 0.5 * (lo - hi) / torch.where(ok, curvature, torch.ones_like(curvature))
            offsets.append(torch.where(ok, delta.clamp(-0.5, 0.5), torch.zeros_like(delta)))
        return torch.stack(offsets, -1)

    def refine(self, points: torch.Tensor, steps: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
               codes: torch.Tensor) -> torch.Tensor:
        """``refine_levels`` axis-wise parabolic steps on the one-source likelihood from
        (u, w, 1/r) ``points [B, C, 3]``. Level i probes ±steps/2^(i+1) per axis and moves at most
        two probe widths; a move that would leave the configured (φ, θ, r) box is not taken."""
        B, C, _ = points.shape
        for level in range(self.refine_levels):
            probe = torch.diag(steps * 0.5 ** (level + 1))  # [3, 3], row = axis
            trial = torch.cat([points[:, :, None], points[:, :, None] + probe, points[:, :, None] - probe], 2)
            a = points_steering(self.system, trial.reshape(B, C * 7, 3), "exact").to(codes.dtype)
            value = one_source_spectrum(y, H, codes, a).reshape(B, C, 7).double()
            centre, hi, lo = value[..., :1], value[..., 1:4], value[..., 4:]
            curvature = lo - 2.0 * centre + hi
            concave = curvature < 0
            # Concave: the parabola's vertex; otherwise one probe width uphill.
            delta = torch.where(concave, 0.5 * (lo - hi) / torch.where(concave, curvature, -torch.ones_like(curvature)),
                                torch.sign(hi - lo))
            moved = points + delta.clamp(-2.0, 2.0) * probe.diagonal()
            points = torch.where(is_feasible(self.system, moved)[..., None], moved, points)
        return points

    def locate(self, x: torch.Tensor, y: torch.Tensor | None = None, H: torch.Tensor | None = None,
               codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, w, 1/r) of the candidates [B, count, 3] float64, and their Bartlett values over the
        spectrum's maximum [B, count] in (0, 1], from x̂ [B, L, N] (and the measurements y, H and
        codes, which the likelihood levels need)."""
        if self.refine_levels and (y is None or H is None or codes is None):
            raise ValueError(f"refine_levels={self.refine_levels}: y, H and codes are required")
        spectrum = self.spectrum(x)
        index = self.peaks(spectrum)
        points, steps = self.points(x.device)
        located = points[index] + self._parabola(spectrum, index).double() * steps
        if self.refine_levels:
            located = self.refine(located, steps, y, H, codes)
        return located, spectrum.gather(1, index) / spectrum.amax(-1, keepdim=True)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, H: torch.Tensor | None = None,
                codes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(√N·a(η_j) [B, N, count], relative Bartlett values [B, count]) of :meth:`locate`."""
        located, value = self.locate(x, y, H, codes)
        steering = points_steering(self.system, located, "exact") * math.sqrt(self.system.num_elements)
        return steering.transpose(-1, -2), value
