"""RIS geometry and near-field steering vectors (system_model.md, "Geometry").

Element n = j·N_H + i sits at (0, h_n, v_n) with the array centred at the origin.
``a_n(φ,θ,r) = exp(−j k0 (‖q − p_n‖ − r)) / √N`` (exact spherical model). The Fresnel
option replaces the path difference by its second-order expansion.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from ..config import SystemConfig

SteeringModel = Literal["exact", "fresnel"]


def element_positions(system: SystemConfig, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(h [N], v [N]) element coordinates in metres, in the API's element order."""
    i = torch.arange(system.ris_h, dtype=torch.float64)
    j = torch.arange(system.ris_v, dtype=torch.float64)
    h = (i - (system.ris_h - 1) / 2) * system.spacing_h_m
    v = (j - (system.ris_v - 1) / 2) * system.spacing_v_m
    hh = h[None, :].expand(system.ris_v, system.ris_h).reshape(-1)  # i fastest
    vv = v[:, None].expand(system.ris_v, system.ris_h).reshape(-1)
    return hh.to(device=device, dtype=dtype), vv.to(device=device, dtype=dtype)


def resolution_cells(system: SystemConfig) -> tuple[float, float, float]:
    """Rayleigh-like cell sizes in (u, w, 1/r).

    u and w: λ/(aperture) per axis. 1/r: the change that adds π of quadratic phase at the
    aperture's corner, λ/ρ_max², with ρ_max² = max(h_n² + v_n²).
    """
    lam = system.wavelength_m
    aperture_h = system.ris_h * system.spacing_h_m
    aperture_v = system.ris_v * system.spacing_v_m
    rho2 = ((system.ris_h - 1) * system.spacing_h_m / 2) ** 2 + ((system.ris_v - 1) * system.spacing_v_m / 2) ** 2
    return lam / aperture_h, lam / aperture_v, lam / max(rho2, 1e-12)


def direction_cosines(azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u = cosθ sinφ, w = sinθ."""
    phi = torch.deg2rad(azimuth_deg)
    theta = torch.deg2rad(elevation_deg)
    return torch.cos(theta) * torch.sin(phi), torch.sin(theta)


def path_difference(system: SystemConfig, azimuth_deg, elevation_deg, range_m,
                    model: SteeringModel = "exact") -> torch.Tensor:
    """‖q − p_n‖ − r in metres, ``[..., N]``, real. Computed in the inputs' float dtype."""
    azimuth_deg, elevation_deg, range_m = torch.broadcast_tensors(
        torch.as_tensor(azimuth_deg), torch.as_tensor(elevation_deg), torch.as_tensor(range_m)
    )
    if not azimuth_deg.is_floating_point():
        azimuth_deg, elevation_deg, range_m = (t.to(torch.float32) for t in (azimuth_deg, elevation_deg, range_m))
    dtype = azimuth_deg.dtype
    h, v = element_positions(system, device=azimuth_deg.device, dtype=dtype)
    u, w = direction_cosines(azimuth_deg, elevation_deg)
    r = range_m[..., None]
    proj = h * u[..., None] + v * w[..., None]  # h_n u + v_n w
    rho2 = h * h + v * v
    if model == "exact":
        # sqrt(r² − 2r·proj + ρ²) − r, rewritten to avoid cancellation at large r.
        num = rho2 - 2.0 * r * proj
        return num / (torch.sqrt(r * r + num) + r)
    if model == "fresnel":
        return -proj + (rho2 - proj * proj) / (2.0 * r)
    raise ValueError(f"steering model must be 'exact' or 'fresnel', got {model!r}")


def steering(system: SystemConfig, azimuth_deg, elevation_deg, range_m,
             model: SteeringModel = "exact") -> torch.Tensor:
    """Unit-norm near-field steering vectors ``[..., N]`` (complex64 for float32 inputs).

    Angles in degrees, range in metres; inputs broadcast. ``model="fresnel"`` is an
    estimator option only; data is always generated with the exact model.
    """
    delta = path_difference(system, azimuth_deg, elevation_deg, range_m, model)
    k0 = 2.0 * math.pi / system.wavelength_m
    amp = torch.full_like(delta, 1.0 / math.sqrt(system.num_elements))
    return torch.polar(amp, -k0 * delta)


def far_field_response(system: SystemConfig, azimuth_deg: torch.Tensor, elevation_deg: torch.Tensor) -> torch.Tensor:
    """Unit-modulus planar-wave RIS response ``[..., N]`` (used for the BS–RIS LoS part)."""
    h, v = element_positions(system, device=azimuth_deg.device, dtype=azimuth_deg.dtype)
    u, w = direction_cosines(azimuth_deg, elevation_deg)
    k0 = 2.0 * math.pi / system.wavelength_m
    phase = k0 * (h * u[..., None] + v * w[..., None])
    return torch.polar(torch.ones_like(phase), phase)
