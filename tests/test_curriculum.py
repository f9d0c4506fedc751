"""Phase chaining through the run folder, and a failed gate's exit code (real runs)."""

import json

import numpy as np
import pytest
import torch

from trainrun import FAST, train

SMOKE = FAST + ["max_steps=4"]
P1 = SMOKE + ["val.image_scenes=1", "val.patience=0", "data.val_scenes=32", "data.val_batch_size=32"]


@pytest.fixture(scope="module")
def phase0(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run = train(out, SMOKE)
    assert run.returncode == 0, run.log[-3000:]
    return out, run


@pytest.mark.slow
def test_phase1_starts_from_phase0_best(phase0):
    out, p0 = phase0
    run = train(out, P1 + ["gate.enforce=false"], config="configs/phase1.yaml")
    assert run.returncode == 0, run.log[-3000:]
    assert f"initialized from {p0.run_dir / 'best'}" in run.log
    gate = json.loads((run.run_dir / "gate.json").read_text())
    assert gate["kind"] == "phase1" and gate["first_val"]["num_scenes"] == 32
    assert {"K_acc", "success", "k_loc", "rmse_az_deg"} <= {c["name"] for c in gate["criteria"]}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run.run_dir / "tb"), size_guidance={"images": 0})
    acc.Reload()
    assert "music/scene0" in acc.Tags()["images"]
    # The loss mixes β = 0.25; MUSIC and the served best/ use the config's localization β.
    assert [e.value for e in acc.Scalars("loss/beta")][-1] == pytest.approx(0.25)
    assert [e.value for e in acc.Scalars("loss/beta_localize")][-1] == pytest.approx(0.5)
    meta = json.loads((run.run_dir / "best" / "meta.json").read_text())
    assert (meta["beta"], meta["train_beta"]) == (0.5, 0.25)


@pytest.mark.slow
def test_missing_predecessor_is_a_clear_error(tmp_path):
    run = train(tmp_path, P1, config="configs/phase1.yaml")
    assert run.returncode == 2
    line = run.log.strip().splitlines()[-1]
    assert line.startswith("error: init_from=auto:") and "phase0/best/model.pt not found" in line


@pytest.mark.slow
def test_explicit_init_from_overrides_auto(phase0, tmp_path):
    _, p0 = phase0
    # beta.localize=1 with the true K: validation's MUSIC must see exactly the sample covariance.
    run = train(tmp_path, P1 + ["gate.enforce=false", f"init_from={p0.run_dir / 'best'}", "beta.localize=1.0",
                                "val.k_source=oracle"], config="configs/phase1.yaml")
    assert run.returncode == 0, run.log[-3000:]
    assert f"initialized from {p0.run_dir / 'best'}" in run.log
    from ris_dist.config import load_system
    from ris_dist.covariance import effective_covariance
    from ris_dist.localize import localize
    from ris_dist.metrics import aggregate, per_scene
    from ris_dist.physics import simulate
    from ris_dist.train.config import load_train_config

    cfg = load_train_config(run.run_dir / "config.yaml")
    system = load_system(cfg.system)
    batch = simulate(system, torch.arange(cfg.data.val_scenes), cfg.data.seed, cfg.data.val_split)
    R = effective_covariance(batch.R_samp, batch.R_samp, 1.0)
    want = aggregate(per_scene(localize(R, system, num_sources=batch.num_sources), batch, system), system)
    got = json.loads((run.run_dir / "gate.json").read_text())["first_val"]
    assert got["num_scenes"] == 32 and got["success"] == pytest.approx(want["success"])
    for key in ("rmse_az_deg", "rmse_el_deg", "rmse_range_m"):
        assert got[key] == pytest.approx(want[key], rel=1e-3), key


@pytest.mark.slow
def test_failed_gate_exits_non_zero_unless_not_enforced(tmp_path):
    run = train(tmp_path / "a", SMOKE + ["gate.enforce=true", "gate.max_val_nmse=1e-9"])
    assert run.returncode == 3
    gate = json.loads((run.run_dir / "gate.json").read_text())
    assert not gate["passed"] and gate["enforced"]
    run = train(tmp_path / "b", SMOKE + ["gate.enforce=false", "gate.max_val_nmse=1e-9"])
    assert run.returncode == 0
    assert not json.loads((run.run_dir / "gate.json").read_text())["passed"]


@pytest.mark.slow
def test_min_delta_keeps_the_start_unless_beaten_by_the_margin(tmp_path):
    # Phase 0 overfits: validation NMSE falls over the 4 steps, but never by 1e9.
    run = train(tmp_path, SMOKE + ["val.at_start=true", "val.every_steps=2", "val.min_delta=1e9"])
    assert run.returncode == 0, run.log[-3000:]
    nmse = {step: r["nmse"] for step, r in run.records("val").items()}
    assert sorted(nmse) == [0, 2, 4] and nmse[4] < nmse[0]
    assert json.loads((run.run_dir / "gate.json").read_text())["best_step"] == 0
    assert json.loads((run.run_dir / "best" / "meta.json").read_text())["step"] == 0


@pytest.mark.slow
def test_success_rule_validation_scores_what_the_localizer_serves(phase0, tmp_path):
    _, p0 = phase0
    run = train(tmp_path, P1 + [f"init_from={p0.run_dir / 'best'}", "val.k_decision=success"],
                config="configs/phase2.yaml")
    assert run.returncode == 0, run.log[-3000:]
    from ris_dist import Localizer
    from ris_dist.config import load_system
    from ris_dist.localize import SuccessTable
    from ris_dist.metrics import aggregate, per_scene
    from ris_dist.physics import simulate
    from ris_dist.train.config import load_train_config

    meta = json.loads((run.run_dir / "best" / "meta.json").read_text())
    table = SuccessTable.from_json(meta["k_success_table"])
    assert meta["k_decision"] == "success" and sum(map(sum, table.num_scenes)) == 32
    cfg = load_train_config(run.run_dir / "config.yaml")
    system = load_system(cfg.system)
    batch = simulate(system, torch.arange(cfg.data.val_scenes), cfg.data.seed, cfg.data.val_split)
    loc = Localizer.from_checkpoint(run.run_dir / "best")
    served = aggregate(per_scene(loc(batch.y, batch.H, batch.codes, batch.snr_db), batch, system), system)
    argmax = per_scene(loc(batch.y, batch.H, batch.codes, batch.snr_db, k_decision="map"), batch, system)
    got = meta["metrics"]
    assert got["K_acc"] == pytest.approx(served["K_acc"]) and got["success"] == pytest.approx(served["success"])
    assert got["success_map"] == pytest.approx(argmax.success.mean())
    oracle = aggregate(per_scene(loc(batch.y, batch.H, batch.codes, batch.snr_db, num_sources=batch.num_sources),
                                 batch, system), system)
    for name in ("success", "rmse_az_deg", "rmse_el_deg", "rmse_range_m"):
        assert got[f"{name}_oracle_k"] == pytest.approx(oracle[name], rel=1e-4), name
    assert got["k_head_acc"] == pytest.approx(np.mean(argmax.k_hat == argmax.k_true))
