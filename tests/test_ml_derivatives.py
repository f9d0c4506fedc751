"""The refinement's closed-form derivatives against autograd and against the CRB's Fisher matrix."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.crb import fisher
from ris_dist.localize.ml_derivatives import likelihood_derivatives
from ris_dist.localize.ml_likelihood import (
    concentrated_nll,
    measurements,
    negative_log_likelihood,
    projections,
    source_steering,
)
from ris_dist.physics import simulate


@pytest.fixture(scope="module", params=["tiny", "full"])
def perturbed(request):
    """Scenes at 10 dB, positions a fraction of a cell off the truth (a refinement's iterate)."""
    system = load_system(request.param, snr_range_db=[10.0, 10.0])
    batch = simulate(system, range(4), 3, "test")
    meas = measurements(system, batch.y, batch.H, batch.codes, batch.snr_db)
    x = torch.stack([batch.azimuth_deg, batch.elevation_deg, batch.range_m], -1).to(torch.float64)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x + noise * torch.tensor([0.3, 0.3, 0.01], dtype=torch.float64)
    x = torch.where(batch.valid[..., None], x, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    _, powers = concentrated_nll(system, meas, x, batch.valid)
    return system, meas, x, batch.valid, powers


def test_gradient_is_the_derivative_along_the_energy_rescaling(perturbed):
    """Autograd of the NLL with the fitted powers held and rescaled to the SNR's energy at each x."""
    system, meas, x, active, powers = perturbed
    gradient, _, _ = likelihood_derivatives(system, meas, x, active, powers)
    xg = x.clone().requires_grad_(True)
    gram, z = projections(meas, source_steering(system, xg))
    energy = torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(1)
    rescaled = powers * meas.signal_energy[:, None] / (powers * energy).sum(-1, keepdim=True)
    nll = negative_log_likelihood(meas.noise_var, meas.y_norm2, system.num_bs_antennas, gram, z, rescaled)
    (expected,) = torch.autograd.grad(nll.sum(), xg)
    expected = torch.where(active[..., None], expected, torch.zeros_like(expected)).reshape(gradient.shape)
    assert torch.allclose(gradient, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


def test_gradient_is_close_to_that_of_the_concentrated_nll(perturbed):
    """The fitted powers are near the likelihood's optimum, so the envelope gradient is near the
    full derivative (through the power fit) of the NLL the line search minimises."""
    system, meas, x, active, powers = perturbed
    gradient, _, _ = likelihood_derivatives(system, meas, x, active, powers)
    xg = x.clone().requires_grad_(True)
    nll, _ = concentrated_nll(system, meas, xg, active)
    (full,) = torch.autograd.grad(nll.sum(), xg)
    full = torch.where(active[..., None], full, torch.zeros_like(full)).reshape(gradient.shape)
    assert float((gradient - full).norm() / full.norm()) < 0.05


def test_known_power_fisher_is_the_crb_fisher_and_the_schur_complement_is_smaller(perturbed):
    system, meas, x, active, powers = perturbed
    _, known, unknown = likelihood_derivatives(system, meas, x, active, powers)
    scenes = SimpleNamespace(H=meas.H, codes=meas.codes, noise_var=meas.noise_var, valid=active,
                             azimuth_deg=x[..., 0], elevation_deg=x[..., 1], range_m=x[..., 2], powers=powers)
    expected = fisher(scenes, system)
    assert torch.allclose(known, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))
    # Unknown powers can only lose information: F_known − F_unknown = F_xp F_pp^-1 F_px ⪰ 0, and ≠ 0.
    gap = torch.linalg.eigvalsh(known - unknown)
    scale = torch.linalg.eigvalsh(known).amax(-1, keepdim=True)
    assert bool((gap >= -1e-9 * scale).all())
    assert bool((gap.amax(-1) > 1e-6 * scale[:, 0]).all())
