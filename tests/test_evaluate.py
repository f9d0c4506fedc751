"""Evaluation: report files, B2 near-perfect on simulated tiny scenes, CLI errors exit 2."""

from __future__ import annotations

import json
import math

import pytest

from ris_dist.evaluate import EXIT_USER_ERROR, METHODS, EvaluateError, evaluate_methods, main, parse_methods
from ris_dist.localize.estimates import Estimates
from ris_dist.physics import simulate


@pytest.fixture(scope="module")
def batches(system):
    return [simulate(system, range(0, 32), 0, "test"), simulate(system, range(32, 64), 0, "test")]


def truth_method(batch, system):
    return Estimates(azimuth_deg=batch.azimuth_deg, elevation_deg=batch.elevation_deg, range_m=batch.range_m,
                     valid=batch.valid, num_sources=batch.num_sources)


def test_b1_b2_write_reports_and_b2_succeeds(system, batches, tmp_path):
    out = tmp_path / "rep"
    res = evaluate_methods(batches, system, ["b1", "b2"], out)
    for name in ("results.json", "report.md", "rmse_vs_snr.png", "success_vs_snr.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["methods"]) == {"b1", "b2"} and on_disk["num_scenes"] == 64
    b2 = res["methods"]["b2"]["overall"]
    assert b2["success"] >= 0.99 and b2["K_acc"] == 1.0
    assert len(res["methods"]["b1"]["by_snr"]) == 5 and len(res["methods"]["b1"]["by_range"]) == 5
    for key in ("ratio_az_deg", "ratio_el_deg", "ratio_range_m", "crb_az_deg"):
        assert math.isfinite(b2[key]) and b2[key] > 0
    assert sum(r["num_scenes"] for r in res["methods"]["b2"]["by_snr"]) == 64
    report = (out / "report.md").read_text()
    assert "RMSE/√CRB φ" in report and "## Method `b1`" in report and "## Method `b2`" in report
    # the efficient-estimator reference: a probability per bin that rises with SNR, in the report
    ref = [r["success_at_crb"] for r in res["crb"]["by_snr"]]
    assert all(0.0 <= v <= 1.0 for v in ref) and ref[0] < ref[-1]
    assert sum(r["num_scenes"] for r in res["crb"]["by_snr"]) == 64
    assert 0.0 < res["crb"]["overall"]["success_at_crb"] < 1.0 and "success at the CRB" in report


def test_custom_method_and_nan_bins(system, batches):
    # an empty SNR bin and a method with no estimates: NaN, not 0, and the JSON stays valid
    def nothing(batch, system):
        est = truth_method(batch, system)
        est.valid = est.valid & False
        est.num_sources = est.num_sources * 0
        return est

    res = evaluate_methods(batches, system, {"truth": truth_method, "nothing": nothing}, None,
                           snr_edges=[-5, 20, 30])
    t = res["methods"]["truth"]["overall"]
    assert t["success"] == 1.0 and t["k_loc"] == 1.0 and t["ratio_az_deg"] == 0.0
    assert math.isnan(res["methods"]["truth"]["by_snr"][1]["rmse_az_deg"])
    n = res["methods"]["nothing"]["overall"]
    assert math.isnan(n["rmse_az_deg"]) and math.isnan(n["ratio_az_deg"]) and n["success"] == 0.0


def test_paired_comparison_with_b1(system, batches, tmp_path):
    from scipy.stats import binomtest

    res = evaluate_methods(batches, system, {"b1": METHODS["b1"], "b2": METHODS["b2"], "truth": truth_method},
                           tmp_path / "rep")
    assert set(res["paired"]) == {"b1"} and set(res["paired"]["b1"]) == {"truth"}  # B2 is an oracle: not paired
    b1_hits = round(res["methods"]["b1"]["overall"]["success"] * 64)
    assert 0 < b1_hits < 64, "the fixture should have B1 successes and failures"
    t = res["paired"]["b1"]["truth"]["overall"]
    # truth succeeds everywhere: every B1 success is shared, every B1 failure is truth's alone
    assert (t["num_scenes"], t["both"], t["only_method"], t["only_reference"]) == (64, b1_hits, 64 - b1_hits, 0)
    assert t["p_value"] == pytest.approx(binomtest(64 - b1_hits, 64 - b1_hits).pvalue)
    bins = res["paired"]["b1"]["truth"]["by_snr"]
    assert sum(m["only_method"] for m in bins) == t["only_method"] and sum(m["num_scenes"] for m in bins) == 64
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Paired success vs `b1`" in report and "## Paired K̂ = K vs `b1`" in report
    # K̂ = K, paired the same way: truth always has the true K, so B1's correct counts are all shared.
    k = res["paired_k_correct"]["b1"]["truth"]["overall"]
    b1_k = round(res["methods"]["b1"]["overall"]["K_acc"] * 64)
    assert b1_k != b1_hits, "the fixture should tell K̂ = K apart from success"
    assert (k["num_scenes"], k["both"], k["only_method"], k["only_reference"]) == (64, b1_k, 64 - b1_k, 0)
    assert sum(m["only_method"] for m in res["paired_k_correct"]["b1"]["truth"]["by_snr"]) == 64 - b1_k
    assert evaluate_methods(batches, system, {"truth": truth_method}, None)["paired"] == {}


def test_parse_methods():
    assert parse_methods(None) == ["b1", "b2"]
    assert parse_methods(["b2", "b1,b2"]) == ["b2", "b1"]
    with pytest.raises(EvaluateError):
        parse_methods(["b1,music"])


def test_cli_missing_test_set(tmp_path, capsys):
    assert main(["--system", "tiny", "--test-set", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) \
        == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and "\n" not in err


def test_cli_unknown_method(tmp_path, capsys):
    assert main(["--test-set", str(tmp_path), "--method", "b3"]) == EXIT_USER_ERROR
    assert "unknown method 'b3'" in capsys.readouterr().err


def test_cli_end_to_end_on_frozen_split(system, tmp_path, capsys):
    from ris_dist.data import write_split

    split_dir = tmp_path / "test"
    write_split(system, 0, "test", 24, split_dir, shard_size=16, progress=False)
    out = tmp_path / "out"
    assert main(["--system", "tiny", "--test-set", str(split_dir), "--method", "b2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "results.json" in printed
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["b2"] and res["num_scenes"] == 24
    assert res["methods"]["b2"]["overall"]["success"] >= 0.99
    # a --system that differs from the split's own is a user error
    assert main(["--system", "full", "--test-set", str(split_dir), "--out", str(out)]) == EXIT_USER_ERROR
