"""Batched near-field MUSIC: accuracy on R_true, input validation, dense agreement, Fresnel option."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ris_dist.config import load_system
from ris_dist.localize import Estimates, SearchConfig, localize, music_spectrum
from ris_dist.localize.grid import points_steering
from ris_dist.physics import simulate
from ris_dist.physics.steering import direction_cosines, resolution_cells, steering

SEED = 1


@pytest.fixture(scope="module")
def scenes():
    """A fixed batch per system: tiny 48 scenes, full 16 (K = 1..K_max both covered)."""
    out = {}
    for name, count in (("tiny", 48), ("full", 16)):
        system = load_system(name)
        out[name] = (system, simulate(system, torch.arange(count), seed=SEED, split="test"))
    return out


def _truth_and_estimate(batch, est: Estimates, b: int) -> tuple[np.ndarray, np.ndarray]:
    k = int(batch.num_sources[b])
    truth = np.stack([batch.azimuth_deg[b, :k], batch.elevation_deg[b, :k], batch.range_m[b, :k]], -1)
    valid = est.valid[b].numpy()
    found = np.stack([est.azimuth_deg[b], est.elevation_deg[b], est.range_m[b]], -1)[valid]
    return truth.astype(np.float64), found.astype(np.float64)


def _matched(truth: np.ndarray, found: np.ndarray, scale=(2.0, 2.0, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    cost = np.sqrt((((truth[:, None] - found[None]) / np.asarray(scale)) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(cost)
    return truth[rows], found[cols]


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_recovers_sources_on_true_covariance(scenes, name):
    system, batch = scenes[name]
    assert int(batch.num_sources.max()) == system.max_sources and int(batch.num_sources.min()) == 1
    est = localize(batch.R_true, system, num_sources=batch.num_sources)
    assert est.azimuth_deg.shape == (len(batch), system.max_sources)
    assert torch.equal(est.num_sources, batch.num_sources)
    assert torch.equal(est.valid, batch.valid)
    assert est.steering_model == "exact"
    for b in range(len(batch)):
        truth, found = _truth_and_estimate(batch, est, b)
        t, f = _matched(truth, found)
        assert len(t) == len(truth)
        err = np.abs(t - f)
        assert (err[:, 0] <= 0.1).all() and (err[:, 1] <= 0.1).all(), f"scene {b}: {t} vs {f}"
        assert (err[:, 2] <= 0.02 * t[:, 2]).all(), f"scene {b}: {t} vs {f}"
    # Padded slots are zero.
    assert float(est.azimuth_deg[~est.valid].abs().sum()) == 0.0


def test_estimated_order_on_true_covariance_with_noise_floor(scenes):
    system, batch = scenes["tiny"]
    eye = torch.eye(system.num_elements, dtype=batch.R_true.dtype)
    est = localize(batch.R_true + 1e-2 * eye, system)  # MDL with L = system.num_snapshots
    assert torch.equal(est.num_sources, batch.num_sources)
    est_aic = localize(batch.R_true + 1e-2 * eye, system, order_method="aic", num_snapshots=100)
    assert torch.equal(est_aic.num_sources, batch.num_sources)


def _cells(system, azimuth_deg, elevation_deg, range_m) -> np.ndarray:
    u, w = direction_cosines(torch.as_tensor(azimuth_deg), torch.as_tensor(elevation_deg))
    cu, cw, cr = resolution_cells(system)
    return np.stack([u.numpy() / cu, w.numpy() / cw, 1.0 / np.asarray(range_m) / cr], -1)


def test_dense_agrees_with_coarse_to_fine(scenes):
    system, batch = scenes["tiny"]
    batch = batch.select(slice(0, 12))
    search = SearchConfig(dense_spacing_cells=0.05)
    fine = localize(batch.R_true, system, num_sources=batch.num_sources)
    dense = localize(batch.R_true, system, num_sources=batch.num_sources, method="dense", search=search)
    assert torch.equal(fine.valid, dense.valid)
    for b in range(len(batch)):
        _, a = _truth_and_estimate(batch, fine, b)
        _, d = _truth_and_estimate(batch, dense, b)
        a_cells, d_cells = _cells(system, *a.T), _cells(system, *d.T)
        cost = np.linalg.norm(a_cells[:, None] - d_cells[None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        # Within one dense step per axis: the best grid point of a tilted peak need not be the
        # nearest one, so half a step is not guaranteed.
        assert (np.abs(a_cells[rows] - d_cells[cols]) <= 0.05).all(), f"scene {b}"


def test_fresnel_option_runs_and_is_reported(scenes):
    system, batch = scenes["full"]
    est = localize(batch.R_true[:4], system, num_sources=batch.num_sources[:4], steering_model="fresnel")
    assert est.steering_model == "fresnel"
    assert torch.isfinite(est.azimuth_deg).all() and torch.isfinite(est.range_m).all()
    assert torch.equal(est.valid, batch.valid[:4])
    # Model mismatch only: estimates stay within a few degrees (the error grows as r shrinks).
    for b in range(4):
        truth, found = _truth_and_estimate(batch, est, b)
        t, f = _matched(truth, found)
        assert (np.abs(t[:, :2] - f[:, :2]) <= 5.0).all()


def test_points_steering_matches_physics():
    system = load_system("full")
    gen = torch.Generator().manual_seed(0)
    az = torch.empty(64, dtype=torch.float64).uniform_(-60, 60, generator=gen)
    el = torch.empty(64, dtype=torch.float64).uniform_(-30, 30, generator=gen)
    rng = torch.empty(64, dtype=torch.float64).uniform_(0.5, 10, generator=gen)
    u, w = direction_cosines(az, el)
    points = torch.stack([u, w, 1.0 / rng], -1)
    for model in ("exact", "fresnel"):
        ref = steering(system, az, el, rng, model=model)
        got = points_steering(system, points, model, torch.float64)
        assert torch.allclose(got, ref, atol=1e-12), model


def test_music_spectrum_peaks_at_sources(scenes):
    system, batch = scenes["tiny"]
    batch = batch.select(slice(0, 4))
    at_truth = music_spectrum(batch.R_true, system, batch.num_sources,
                              batch.azimuth_deg, batch.elevation_deg, batch.range_m)
    off = music_spectrum(batch.R_true, system, batch.num_sources,
                         batch.azimuth_deg + 10.0, batch.elevation_deg, batch.range_m)
    assert at_truth.shape == (4, system.max_sources)
    assert (at_truth[batch.valid] > 1e6).all()
    assert (off[batch.valid] < 1e3).all()
    shared = music_spectrum(batch.R_true, system, batch.num_sources, torch.zeros(7), torch.zeros(7), torch.ones(7))
    assert shared.shape == (4, 7)


def test_batch_independence(scenes):
    system, batch = scenes["full"]
    whole = localize(batch.R_true[:6], system, num_sources=batch.num_sources[:6])
    single = localize(batch.R_true[3:4], system, num_sources=batch.num_sources[3:4])
    assert torch.allclose(whole.select(slice(3, 4)).azimuth_deg, single.azimuth_deg, atol=1e-3)


def test_nan_covariance_raises_with_scene_index(scenes):
    system, batch = scenes["tiny"]
    R = batch.R_true[:3].clone()
    R[2, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*scene 2"):
        localize(R, system)


def test_non_hermitian_covariance_raises_with_scene_index(scenes):
    system, batch = scenes["tiny"]
    R = batch.R_true[:3].clone()
    R[1, 0, 3] += 0.5
    with pytest.raises(ValueError, match=r"not Hermitian in scene 1"):
        localize(R, system, num_sources=batch.num_sources[:3])
    # Float rounding on an otherwise Hermitian matrix is accepted.
    R = batch.R_true[:3].clone()
    R[1, 0, 3] += 1e-7
    localize(R, system, num_sources=batch.num_sources[:3])


def test_bad_shapes_and_options_raise(scenes):
    system, batch = scenes["tiny"]
    with pytest.raises(ValueError, match=r"shape \[B, 16, 16\]"):
        localize(batch.R_true[0], system)
    with pytest.raises(ValueError, match=r"shape \[B, 16, 16\]"):
        localize(torch.zeros(2, 8, 8, dtype=torch.complex64), system)
    with pytest.raises(ValueError, match=r"num_sources must be in 1\.\.K_max = 2, got 3 in scene 1"):
        localize(batch.R_true[:2], system, num_sources=torch.tensor([1, 3]))
    with pytest.raises(ValueError, match=r"num_sources must have shape \[2\]"):
        localize(batch.R_true[:2], system, num_sources=torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="method"):
        localize(batch.R_true[:2], system, method="newton")
    with pytest.raises(ValueError, match="steering_model"):
        localize(batch.R_true[:2], system, steering_model="parabolic")
    with pytest.raises(ValueError, match="zero matrix in scene 0"):
        localize(torch.zeros(1, 16, 16, dtype=torch.complex64), system)
