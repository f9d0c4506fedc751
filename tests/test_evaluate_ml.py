"""Evaluation with B4, ``model+ml`` and ``model+ml_k``: on request only, time per scene, paired tests vs B1 and B4."""

from __future__ import annotations

import json

import pytest
import torch

from ris_dist.evaluate import EvaluateError, evaluate_methods, main, model_methods, parse_methods
from ris_dist.physics import simulate


def test_b4_is_on_request_and_model_ml_needs_a_checkpoint():
    assert parse_methods(None) == ["b1", "b2"]
    assert parse_methods(["b1,b4", "b4_oracle_k"]) == ["b1", "b4", "b4_oracle_k"]
    with pytest.raises(EvaluateError, match="'model\\+ml' needs --checkpoint"):
        parse_methods(["model+ml"])
    assert parse_methods(["model+ml"], extra_on_request=("model+ml",)) == ["model+ml"]


def test_b4_beside_b1_with_time_per_scene_and_paired_tables(system, tmp_path):
    batches = [simulate(system, range(6), 0, "test")]
    out = tmp_path / "rep"
    res = evaluate_methods(batches, system, ["b1", "b4", "b4_oracle_k"], out)
    for name in ("b1", "b4", "b4_oracle_k"):
        m = res["methods"][name]
        assert m["seconds_per_scene"] == pytest.approx(m["seconds"] / 6) and m["seconds"] > 0
    assert res["methods"]["b4_oracle_k"]["overall"]["K_acc"] == 1.0
    # every method but the reference is paired with B1 and with B4
    assert set(res["paired"]) == {"b1", "b4"}
    assert set(res["paired"]["b1"]) == {"b4", "b4_oracle_k"} and set(res["paired"]["b4"]) == {"b1", "b4_oracle_k"}
    vs_b1, vs_b4 = res["paired"]["b1"]["b4"]["overall"], res["paired"]["b4"]["b1"]["overall"]
    assert (vs_b1["only_method"], vs_b1["only_reference"]) == (vs_b4["only_reference"], vs_b4["only_method"])
    report = (out / "report.md").read_text()
    assert "## Paired success vs `b1`" in report and "## Paired success vs `b4`" in report
    assert "## Method `b4` (" in report and "s per scene)" in report
    assert json.loads((out / "results.json").read_text())["methods"]["b4"]["seconds_per_scene"] > 0


@pytest.mark.slow
def test_cli_model_ml_refines_the_model(tmp_path, capsys):
    from test_evaluate_model import make_checkpoint

    from ris_dist.config import load_system
    from ris_dist.data import write_split
    from ris_dist.inference import Localizer
    from ris_dist.localize.ml_select import SelectConfig

    system = load_system("tiny")
    split = tmp_path / "test"
    write_split(system, 0, "test", 4, split, shard_size=4, progress=False)
    ckpt = make_checkpoint(tmp_path / "run" / "phase2" / "best")
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(out),
                 "--method", "model,model+ml,model+ml_k,b1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["model", "model+ml", "model+ml_k", "b1"]
    assert res["methods"]["model+ml"]["seconds_per_scene"] > 0 and res["methods"]["model+ml_k"]["seconds_per_scene"] > 0
    assert set(res["paired"]["b1"]) == {"model", "model+ml", "model+ml_k"}
    # model+ml keeps the model's K̂ and moves its estimates (refined, inside the box)
    loc = Localizer.from_checkpoint(ckpt)
    batch = simulate(system, range(4), 0, "test")
    plain = loc(batch.y, batch.H, batch.codes, batch.snr_db)
    refined = model_methods(loc)["model+ml"](batch, system)
    assert torch.equal(plain.num_sources, refined.num_sources) and torch.equal(plain.valid, refined.valid)
    assert not torch.equal(plain.azimuth_deg, refined.azimuth_deg)
    assert bool((refined.azimuth_deg.abs() <= 60.0).all() & (refined.range_m[refined.valid] >= 0.3).all())
    # model+ml_k fits every k and chooses; told the true K it keeps it
    selected = model_methods(loc)["model+ml_k"](batch, system)
    assert bool((selected.num_sources >= 1).all() & (selected.num_sources <= system.max_sources).all())
    assert bool((selected.azimuth_deg.abs() <= 60.0).all() & (selected.range_m[selected.valid] >= 0.3).all())
    told = loc(batch.y, batch.H, batch.codes, batch.snr_db, num_sources=batch.num_sources, refine="ml_k")
    assert torch.equal(told.num_sources, batch.num_sources)
    with pytest.raises(ValueError, match="refine must be 'ml', 'ml_k' or None"):
        loc(batch.y, batch.H, batch.codes, batch.snr_db, refine="newton")
    assert main(["--test-set", str(split), "--method", "model+ml"]) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    # the model+ml_k knobs: checked, and refused where nothing would use them
    base = ["--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(tmp_path / "o2")]
    assert main([*base, "--method", "model+ml_k", "--ml-k-prior-weight", "-1"]) == 2
    assert "--ml-k-*: prior_weight must be a number >= 0, got -1.0" in capsys.readouterr().err
    assert main([*base, "--method", "model+ml_k", "--ml-k-grid-start-below-db", "nan"]) == 2
    assert "--ml-k-*: grid_start_below_db must be a number" in capsys.readouterr().err
    assert main([*base, "--method", "model", "--ml-k-penalty", "0.5"]) == 2
    assert "only model+ml_k uses them" in capsys.readouterr().err
    assert main([*base, "--method", "model+ml_k", "--ml-k-prior-weight", "0", "--ml-k-extra-starts", "1"]) == 0
    # an overwhelming prior weight makes K̂ the K head's argmax
    loc.select = SelectConfig(prior_weight=1e6)
    heavy = loc(batch.y, batch.H, batch.codes, batch.snr_db, refine="ml_k")
    assert torch.equal(heavy.num_sources, loc.num_sources(batch.y, batch.H, batch.codes, batch.snr_db, k_decision="map"))
