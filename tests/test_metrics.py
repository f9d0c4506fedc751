"""Metrics on hand-built cases: matching, counts, thresholds, RMSE values, k_loc."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ris_dist.localize.estimates import Estimates
from ris_dist.metrics import per_scene, score, table_by_bin


def _pad(rows: list[list[float]], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals = torch.zeros(len(rows), k, dtype=torch.float64)
    valid = torch.zeros(len(rows), k, dtype=torch.bool)
    for b, row in enumerate(rows):
        vals[b, : len(row)] = torch.tensor(row, dtype=torch.float64)
        valid[b, : len(row)] = True
    return vals, valid


def make_truth(az, el, r, snr=None, k=2):
    a, valid = _pad(az, k)
    e, _ = _pad(el, k)
    rr, _ = _pad(r, k)
    snr = torch.zeros(len(az)) if snr is None else torch.tensor(snr, dtype=torch.float64)
    return SimpleNamespace(num_sources=valid.sum(1), valid=valid, azimuth_deg=a, elevation_deg=e,
                           range_m=rr, snr_db=snr)


def make_est(az, el, r, k=3):
    a, valid = _pad(az, k)
    e, _ = _pad(el, k)
    rr, _ = _pad(r, k)
    return Estimates(azimuth_deg=a, elevation_deg=e, range_m=rr, valid=valid, num_sources=valid.sum(1))


def test_permutation_matches_perfectly(system):
    truth = make_truth([[10.0, -20.0]], [[5.0, -5.0]], [[1.0, 1.5]])
    est = make_est([[-20.0, 10.0]], [[-5.0, 5.0]], [[1.5, 1.0]])
    m = score(est, truth, system)
    assert m["K_acc"] == 1.0 and m["success"] == 1.0
    assert m["rmse_az_deg"] == 0.0 and m["rmse_el_deg"] == 0.0 and m["rmse_range_m"] == 0.0
    assert m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["k_loc"] == 1.0
    ps = per_scene(est, truth, system)
    assert sorted(zip(ps.pair_true_slot.tolist(), ps.pair_est_slot.tolist())) == [(0, 1), (1, 0)]


def test_missed_source_is_k_under(system):
    truth = make_truth([[10.0, -20.0]], [[5.0, -5.0]], [[1.0, 1.5]])
    est = make_est([[-20.5]], [[-5.0]], [[1.5]])
    m = score(est, truth, system)
    assert (m["K_acc"], m["K_under"], m["K_over"], m["success"]) == (0.0, 1.0, 0.0, 0.0)
    assert m["num_pairs"] == 1
    assert m["rmse_az_deg"] == pytest.approx(0.5)
    assert m["precision"] == 1.0 and m["recall"] == 0.5
    assert m["k_loc"] == 0.0  # K_acc = success = 0 on the only scene


def test_extra_source_is_k_over(system):
    truth = make_truth([[10.0]], [[5.0]], [[1.0]])
    est = make_est([[40.0, 10.0, -50.0]], [[0.0, 5.0, 0.0]], [[1.0, 1.0, 0.4]])
    m = score(est, truth, system)
    assert (m["K_acc"], m["K_under"], m["K_over"], m["success"]) == (0.0, 0.0, 1.0, 0.0)
    assert m["rmse_az_deg"] == 0.0  # the right estimate was matched
    assert m["precision"] == pytest.approx(1 / 3) and m["recall"] == 1.0


def test_no_estimates_gives_nan_not_zero(system):
    truth = make_truth([[10.0]], [[5.0]], [[1.0]])
    est = make_est([[]], [[]], [[]])
    m = score(est, truth, system)
    assert math.isnan(m["rmse_az_deg"]) and math.isnan(m["median_range_m"]) and math.isnan(m["p95_el_deg"])
    assert math.isnan(m["precision"]) and m["recall"] == 0.0
    assert m["k_loc"] == 0.0 and m["K_under"] == 1.0


@pytest.mark.parametrize("d_az,d_el,ok", [(2.0, 0.0, True), (-2.0, 2.0, True), (2.01, 0.0, False),
                                          (0.0, -2.001, False)])
def test_angle_threshold_edges(system, d_az, d_el, ok):
    truth = make_truth([[10.0]], [[5.0]], [[1.0]])
    est = make_est([[10.0 + d_az]], [[5.0 + d_el]], [[1.0]])
    assert score(est, truth, system)["success"] == float(ok)


def test_angle_edge_in_float32(system):
    # 0.3 and 2.3 are not exact in float32; the difference still counts as "exactly 2°".
    truth = make_truth([[0.3]], [[0.0]], [[1.0]])
    est = make_est([[2.3]], [[0.0]], [[1.0]])
    truth.azimuth_deg = truth.azimuth_deg.float()
    est.azimuth_deg = est.azimuth_deg.float()
    assert score(est, truth, system)["success"] == 1.0


@pytest.mark.parametrize("r_true,dr,ok", [
    (1.0, 0.5, True),    # abs part: max(0.5, 0.1) = 0.5, inclusive
    (1.0, 0.51, False),
    (8.0, 0.8, True),    # rel part: max(0.5, 0.8) = 0.8
    (8.0, -0.8, True),
    (8.0, 0.81, False),
])
def test_range_threshold_uses_max_of_abs_and_rel(system, r_true, dr, ok):
    truth = make_truth([[0.0]], [[0.0]], [[r_true]])
    est = make_est([[0.0]], [[0.0]], [[r_true + dr]])
    assert score(est, truth, system)["success"] == float(ok)


def test_rmse_values_by_hand(system):
    truth = make_truth([[0.0, 30.0], [10.0]], [[0.0, 10.0], [-10.0]], [[1.0, 1.5], [0.5]])
    est = make_est([[1.0, 30.0], [7.0]], [[0.0, 12.0], [-10.0]], [[1.2, 1.5], [0.5]])
    m = score(est, truth, system)
    # errors az: 1, 0, -3; el: 0, 2, 0; r: 0.2, 0, 0
    assert m["rmse_az_deg"] == pytest.approx(math.sqrt((1 + 0 + 9) / 3))
    assert m["rmse_el_deg"] == pytest.approx(math.sqrt(4 / 3))
    assert m["rmse_range_m"] == pytest.approx(math.sqrt(0.04 / 3))
    assert m["median_az_deg"] == pytest.approx(1.0)
    assert m["p95_az_deg"] == pytest.approx(np.percentile([1, 0, 3], 95))
    assert m["success"] == 0.5 and m["K_acc"] == 1.0
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    s = system.success
    pen = (m["rmse_az_deg"] / s.azimuth_deg + m["rmse_el_deg"] / s.elevation_deg
           + m["rmse_range_m"] / s.range_abs_m) / 3
    assert m["k_loc"] == pytest.approx(0.5 * (1.0 + 0.5) / (1 + pen))
    ps = per_scene(est, truth, system)
    assert ps.success.tolist() == [True, False]
    assert ps.k_true.tolist() == [2, 1] and ps.k_hat.tolist() == [2, 1]


def test_k_loc_falls_with_error(system):
    truth = make_truth([[10.0]], [[5.0]], [[1.0]])
    values = [score(make_est([[10.0 + d]], [[5.0]], [[1.0]]), truth, system)["k_loc"] for d in (0.0, 0.5, 1.5, 5.0)]
    assert values[0] == 1.0
    assert all(a > b for a, b in zip(values, values[1:]))
    assert all(0.0 <= v <= 1.0 for v in values)


def test_table_by_snr_bin_and_empty_bin(system):
    truth = make_truth([[0.0], [0.0], [0.0]], [[0.0], [0.0], [0.0]], [[1.0], [1.0], [1.0]], snr=[-4.0, 1.0, 19.0])
    est = make_est([[1.0], [3.0], [0.0]], [[0.0], [0.0], [0.0]], [[1.0], [1.0], [1.0]])
    rows = table_by_bin(est, truth, system, by="snr_db", edges=[-5, 0, 5, 10, 20])
    assert [r["num_scenes"] for r in rows] == [1, 1, 0, 1]
    assert rows[0]["rmse_az_deg"] == 1.0 and rows[1]["success"] == 0.0 and rows[3]["k_loc"] == 1.0
    assert math.isnan(rows[2]["rmse_az_deg"]) and math.isnan(rows[2]["success"]) and math.isnan(rows[2]["k_loc"])


def test_table_by_range_bins_pairs_by_true_range(system):
    truth = make_truth([[0.0, 30.0]], [[0.0, 0.0]], [[0.4, 1.8]])
    est = make_est([[1.0, 33.0]], [[0.0, 0.0]], [[0.4, 1.8]])
    rows = table_by_bin(est, truth, system, by="range_m", edges=[0.3, 1.0, 2.0])
    assert rows[0]["num_pairs"] == 1 and rows[0]["rmse_az_deg"] == 1.0
    assert rows[1]["num_pairs"] == 1 and rows[1]["rmse_az_deg"] == 3.0
    # the scene (mean range 1.1 m) sits in the second bin for the scene-level metrics
    assert rows[0]["num_scenes"] == 0 and rows[1]["num_scenes"] == 1
    with pytest.raises(ValueError):
        table_by_bin(est, truth, system, by="kappa")


def test_simulated_truth_against_itself(system):
    from ris_dist.physics import simulate

    batch = simulate(system, range(16), 0, "test")
    est = Estimates(azimuth_deg=batch.azimuth_deg, elevation_deg=batch.elevation_deg, range_m=batch.range_m,
                    valid=batch.valid, num_sources=batch.num_sources)
    m = score(est, batch, system)
    assert m["success"] == 1.0 and m["k_loc"] == 1.0 and m["num_pairs"] == int(batch.num_sources.sum())


def test_per_scene_cat_matches_whole(system):
    from ris_dist.metrics import PerScene, aggregate

    truth = make_truth([[0.0, 30.0], [10.0], [5.0]], [[0.0, 10.0], [-10.0], [0.0]], [[1.0, 1.5], [0.5], [1.0]])
    est = make_est([[1.0, 30.0], [7.0], []], [[0.0, 12.0], [-10.0], []], [[1.2, 1.5], [0.5], []])
    whole = per_scene(est, truth, system)
    halves = [per_scene(est.select(r), _select(truth, r), system) for r in (slice(0, 1), slice(1, 3))]
    joined = PerScene.cat(halves)
    np.testing.assert_array_equal(joined.pair_scene, whole.pair_scene)
    a, b = aggregate(joined, system), aggregate(whole, system)
    assert a == pytest.approx(b, nan_ok=True)


def _select(truth, rows):
    return SimpleNamespace(**{k: v[rows] for k, v in vars(truth).items()})
