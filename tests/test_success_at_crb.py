"""success_at_crb: closed-form values, the success box of metrics.per_scene, Monte Carlo agreement."""

from __future__ import annotations

import math

import torch

from ris_dist.crb import success_at_crb
from ris_dist.localize.estimates import Estimates
from ris_dist.metrics import per_scene
from ris_dist.physics import simulate

ONE_SIGMA = math.erf(1 / math.sqrt(2))  # P(|e| <= σ) for a Gaussian


def test_closed_form_values(system):
    s = system.success
    big_r = 2 * s.range_abs_m / s.range_rel  # the relative range tolerance wins here
    std = torch.tensor([
        [[s.azimuth_deg, s.elevation_deg, s.range_abs_m], [math.nan] * 3],    # σ = τ, second slot invalid
        [[1e-9, 1e-9, s.range_rel * big_r], [1e-9, 1e-9, 1e-9]],                # σ_r = rel·r, the rest exact
        [[math.inf] * 3, [math.inf] * 3],                                        # singular Fisher matrix
    ], dtype=torch.float64)
    valid = torch.tensor([[True, False], [True, True], [True, True]])
    range_m = torch.tensor([[1.0, 0.0], [big_r, 1.0], [1.0, 1.0]])
    p = success_at_crb(std, valid, range_m, system)
    assert p.shape == (3,) and p.dtype == torch.float64
    torch.testing.assert_close(p, torch.tensor([ONE_SIGMA ** 3, ONE_SIGMA, 0.0], dtype=torch.float64))


def test_monte_carlo_matches_the_success_metric(system):
    # Gaussian errors with std σ around the truth, scored by metrics.per_scene: the empirical
    # success rate must match the closed form (binomial 4-sigma band).
    gen = torch.Generator().manual_seed(0)
    reps = 1500
    scenes = simulate(system, range(4), 3, "test")
    sigma = torch.tensor([1.5, 1.0, 0.3], dtype=torch.float64)
    std = torch.where(scenes.valid[..., None], sigma, torch.tensor(math.nan, dtype=torch.float64))
    p = success_at_crb(std, scenes.valid, scenes.range_m, system)
    for i in range(4):
        truth = scenes.select(torch.full((reps,), i, dtype=torch.long))
        noise = torch.randn(reps, system.max_sources, 3, generator=gen, dtype=torch.float64) * sigma
        est = Estimates(azimuth_deg=truth.azimuth_deg + noise[..., 0].float(),
                        elevation_deg=truth.elevation_deg + noise[..., 1].float(),
                        range_m=truth.range_m + noise[..., 2].float(), valid=truth.valid,
                        num_sources=truth.num_sources)
        rate = float(per_scene(est, truth, system).success.mean())
        band = 4 * math.sqrt(float(p[i]) * (1 - float(p[i])) / reps) + 1e-3
        assert abs(rate - float(p[i])) <= band, (i, rate, float(p[i]))
