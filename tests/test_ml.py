"""B4 (stochastic ML on the per-snapshot model) and ML refinement: likelihood, accuracy at the CRB,
the order rule, the prior box, bad inputs."""

from __future__ import annotations

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.crb import crb
from ris_dist.localize import Estimates, MLConfig, ml_localize, ml_refine
from ris_dist.localize.ml import ml_fits, order_criterion
from ris_dist.localize.ml_likelihood import (
    concentrated_nll,
    estimate_powers,
    measurements,
    negative_log_likelihood,
    projections,
    source_steering,
)
from ris_dist.physics import simulate

CRB_FACTOR = 5.0
"""Largest allowed |error| / √CRB per parameter at high SNR (a Gaussian error exceeds 5σ with p ≈ 6e-7)."""


def truth(batch) -> torch.Tensor:
    return torch.stack([batch.azimuth_deg, batch.elevation_deg, batch.range_m], -1).to(torch.float64)


def matched_errors(est: Estimates, batch) -> torch.Tensor:
    """|estimate − truth| ``[B, K_max, 3]`` of the valid slots, each true source paired with its nearest estimate."""
    x = torch.stack([est.azimuth_deg, est.elevation_deg, est.range_m], -1).to(torch.float64)
    t = truth(batch)
    d = (x[:, None, :, :] - t[:, :, None, :]).abs()  # [B, true, est, 3]
    d = torch.where(est.valid[:, None, :, None], d, torch.full_like(d, float("inf")))
    nearest = d.norm(dim=-1).argmin(-1)  # [B, true]
    err = d.gather(2, nearest[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    return torch.where(batch.valid[..., None], err, torch.zeros_like(err))


@pytest.fixture(scope="module")
def tiny_30db():
    system = load_system("tiny", snr_range_db=[30.0, 30.0])
    batch = simulate(system, range(24), 7, "test")
    meas = measurements(system, batch.y, batch.H, batch.codes, batch.snr_db)
    return system, batch, ml_fits(system, meas, system.max_sources, MLConfig())


def test_likelihood_equals_the_dense_gaussian_nll(system):
    batch = simulate(system, range(6), 0, "test")
    meas = measurements(system, batch.y, batch.H, batch.codes, batch.snr_db)
    nll, powers = concentrated_nll(system, meas, truth(batch), batch.valid)
    a = source_steering(system, truth(batch))
    G = meas.H[:, None] * meas.codes[:, :, None, :]  # G_l = H diag(c_l)  [B, L, M, N]
    b = G @ a.transpose(-1, -2)[:, None]  # [B, L, M, K]
    C = b @ torch.diag_embed(powers.to(b.dtype))[:, None] @ b.mH
    C = C + meas.noise_var[:, None, None, None] * torch.eye(system.num_bs_antennas, dtype=C.dtype)
    yv = meas.y[..., None]
    dense = (torch.linalg.slogdet(C)[1] + (yv.mH @ torch.linalg.solve(C, yv))[..., 0, 0].real).sum(-1)
    assert torch.allclose(nll, dense, rtol=1e-9, atol=1e-7)
    # powers: non-negative, zero in empty slots, total energy fixed by the SNR
    assert bool((powers >= 0).all()) and bool((powers[~batch.valid] == 0).all())
    energy = (powers * (b.abs() ** 2).sum((1, 2))).sum(-1)
    assert torch.allclose(energy, meas.signal_energy, rtol=1e-9)


def test_b4_true_k_reaches_the_crb_at_30db(tiny_30db):
    system, batch, fits = tiny_30db
    assert int(batch.num_sources.min()) == 1 and int(batch.num_sources.max()) == 2
    est = ml_localize(batch.y, batch.H, batch.codes, batch.snr_db, system, num_sources=batch.num_sources)
    assert torch.equal(est.num_sources, batch.num_sources) and torch.equal(est.valid, batch.valid)
    ratio = matched_errors(est, batch) / crb(batch, system)
    assert float(ratio[batch.valid].max()) <= CRB_FACTOR, ratio[batch.valid].amax(0)


def test_b4_order_rule_picks_the_true_k_at_30db(tiny_30db):
    system, batch, fits = tiny_30db
    k_hat = order_criterion(fits, system.num_snapshots, MLConfig().order_penalty).argmin(-1) + 1
    assert float((k_hat == batch.num_sources).float().mean()) >= 0.95
    est = ml_localize(batch.y[:4], batch.H[:4], batch.codes[:4], batch.snr_db[:4], system)
    assert torch.equal(est.num_sources, k_hat[:4])


def test_b4_noise_free_is_exact():
    # 200 dB: σ² sits on its floor (1e-10 of the received power), the data are noise-free to float32.
    system = load_system("tiny", snr_range_db=[200.0, 200.0])
    batch = simulate(system, range(6), 1, "test")
    est = ml_localize(batch.y, batch.H, batch.codes, batch.snr_db, system, num_sources=batch.num_sources)
    err = matched_errors(est, batch)[batch.valid]
    assert float(err[:, :2].max()) < 0.02 and float(err[:, 2].max()) < 0.01, err


@pytest.mark.parametrize("counts", [(1, 2), (5, 3)])
def test_b4_full_at_30db(counts):
    system = load_system("full", snr_range_db=[30.0, 30.0])
    drawn = simulate(system, range(64), 2, "test").num_sources.tolist()
    batch = simulate(system, [drawn.index(k) for k in counts], 2, "test")
    # The default search (0.3-cell grid, one alternating-projection round after the first
    # refinement): a 0.5-cell grid leaves the K = 3 scene's near source (r = 1.5 m) in a wrong basin.
    est = ml_localize(batch.y, batch.H, batch.codes, batch.snr_db, system, num_sources=batch.num_sources)
    ratio = matched_errors(est, batch) / crb(batch, system)
    assert float(ratio[batch.valid].max()) <= CRB_FACTOR, ratio[batch.valid]


def test_powers_are_the_likelihoods_not_the_moment_fits():
    # full, K = 5 at 30 dB: the moment fit alone sets one of five powers to 0 at the true positions,
    # an NLL about 13 000 above that of the true powers; the scoring steps must close the gap.
    system = load_system("full", snr_range_db=[30.0, 30.0])
    drawn = simulate(system, range(64), 2, "test").num_sources.tolist()
    batch = simulate(system, [drawn.index(5)], 2, "test")
    meas = measurements(system, batch.y, batch.H, batch.codes, batch.snr_db)
    gram, z = projections(meas, source_steering(system, truth(batch)))
    moment = estimate_powers(meas, gram, z, batch.valid)
    assert float(moment.min()) == 0.0, "the scene no longer shows the moment fit's failure"
    nll, powers = concentrated_nll(system, meas, truth(batch), batch.valid)
    at_true_powers = negative_log_likelihood(meas.noise_var, meas.y_norm2, meas.y.shape[-1], gram, z,
                                             batch.powers.to(torch.float64))
    at_moment = negative_log_likelihood(meas.noise_var, meas.y_norm2, meas.y.shape[-1], gram, z, moment)
    assert float(at_moment - at_true_powers) > 1000.0
    # The ML powers fit at least as well as the true ones (up to the SNR-energy scaling: a few nats).
    assert float(nll - at_true_powers) < 10.0, (float(nll), float(at_true_powers))
    assert bool((powers > 0).all())


def test_refinement_stays_in_the_prior_box():
    # The sources sit just outside the tiny box (φ ∈ 62..64°, r ∈ 2.1..2.3 m); refinement starts
    # inside, near the corner, and the likelihood pulls outward: the estimates must stop on the bounds.
    outside = load_system("tiny", azimuth_range_deg=[62.0, 64.0], range_range_m=[2.1, 2.3],
                          snr_range_db=[30.0, 30.0], max_sources=1)
    system = load_system("tiny")
    batch = simulate(outside, range(4), 0, "test")
    start = Estimates(azimuth_deg=torch.full((4, 2), 59.0), elevation_deg=batch.elevation_deg[:, :1].expand(4, 2),
                      range_m=torch.full((4, 2), 1.9), valid=torch.tensor([[True, False]] * 4),
                      num_sources=torch.ones(4, dtype=torch.int64))
    out = ml_refine(start, batch.y, batch.H, batch.codes, batch.snr_db, system, iterations=6)
    (a_lo, a_hi), (e_lo, e_hi), (r_lo, r_hi) = (system.azimuth_range_deg, system.elevation_range_deg,
                                                system.range_range_m)
    az, el, rng = out.azimuth_deg[:, 0], out.elevation_deg[:, 0], out.range_m[:, 0]
    assert bool(((az >= a_lo) & (az <= a_hi) & (el >= e_lo) & (el <= e_hi) & (rng >= r_lo) & (rng <= r_hi)).all())
    assert bool((az > 59.5).all()), "refinement should move toward the sources, onto the φ bound"
    assert torch.equal(out.valid, start.valid) and bool((out.azimuth_deg[:, 1] == 0).all())


def test_ml_refine_from_a_perturbed_start_lowers_the_error(tiny_30db):
    system, batch, _ = tiny_30db
    t = truth(batch)
    start = Estimates(azimuth_deg=(t[..., 0] + 0.8).float(), elevation_deg=(t[..., 1] - 0.8).float(),
                      range_m=(t[..., 2] * 1.05).float(), valid=batch.valid, num_sources=batch.num_sources)
    out = ml_refine(start, batch.y, batch.H, batch.codes, batch.snr_db, system, iterations=4)
    before, after = matched_errors(start, batch)[batch.valid], matched_errors(out, batch)[batch.valid]
    # 0.8° is 5-20 √CRB here: four iterations take most sources most of the way
    assert float(after[:, :2].mean()) < 0.25 * float(before[:, :2].mean())
    assert float(after[:, :2].max()) < float(before[:, :2].max())


@pytest.mark.parametrize("case, match", [
    ("y_nan", r"^y: non-finite"), ("snr_nan", r"^snr_db: non-finite"), ("H_shape", r"^H: expected"),
    ("y_shape", r"^y: expected"), ("codes_modulus", r"^codes: not unit-modulus"), ("snr_shape", r"^snr_db: expected"),
])
def test_bad_inputs_one_line_errors(system, case, match):
    batch = simulate(system, range(2), 0, "test")
    y, H, codes, snr = batch.y.clone(), batch.H, batch.codes.clone(), batch.snr_db.clone()
    if case == "y_nan":
        y[1, 0, 0] = complex("nan")
    elif case == "snr_nan":
        snr[0] = float("inf")
    elif case == "H_shape":
        H = H[:, :-1]
    elif case == "y_shape":
        y = y[:, :-1]
    elif case == "codes_modulus":
        codes[1, 3, 2] *= 1.5
    elif case == "snr_shape":
        snr = snr[:1]
    with pytest.raises(ValueError, match=match) as err:
        ml_localize(y, H, codes, snr, system)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=match):
        start = Estimates(batch.azimuth_deg, batch.elevation_deg, batch.range_m, batch.valid, batch.num_sources)
        ml_refine(start, y, H, codes, snr, system)


def test_ml_config_rejects_bad_values():
    for key, value in (("grid_spacing_cells", 0.0), ("ap_cycles", -1), ("refine_damping", 0.0),
                       ("order_penalty", -1.0), ("min_points_per_axis", 1)):
        with pytest.raises(ValueError, match=key):
            MLConfig(**{key: value})
