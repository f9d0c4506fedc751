"""A real short phase-0 run through ``python -m ris_dist.train`` (one process, CPU).

Checks what the old pipeline got wrong: NMSE falls, weights move after real steps, a
non-finite gradient is skipped without ticking the scheduler, and the run folder holds
the resolved config, metrics, TensorBoard events and a gate.json with every criterion.
"""

import json
import math
import subprocess
import sys

import pytest
import yaml

from ris_dist.train.config import load_train_config

STEPS = 24
# configs/phase0.yaml's schedule, with optim.warmup_steps=4 (checked against the run's config.yaml).
LR, FLOOR, MIN_RATIO, WARMUP = 1e-3, 0.1, 0.05, 4


def expected_lr(real_steps: int) -> float:
    """Backbone LR after ``real_steps`` accepted steps: linear from LR·FLOOR to LR over WARMUP steps,
    then half a cosine down to LR·MIN_RATIO at step STEPS."""
    if real_steps < WARMUP:
        return LR * (FLOOR + (1 - FLOOR) * real_steps / WARMUP)
    t = (real_steps - WARMUP) / (STEPS - WARMUP)
    return LR * (MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * t)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={out}",
           "run_name=t", f"max_steps={STEPS}", "data.train_scenes=128", "data.val_scenes=128", "data.batch_size=32",
           "optim.warmup_steps=4", "val.every_steps=8", "log.every_steps=1", "log.progress_bar=false",
           "gate.enforce=false", "debug.inject_nonfinite_grad={ranks: [0], steps: [5, 6], value: nan}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = out / "t" / "phase0"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, records, proc.stderr + proc.stdout


def _kind(records, kind):
    return {r["step"]: r for r in records if r["kind"] == kind}


def test_selftest_and_startup_lines(run):
    _, _, log = run
    assert "[SELFTEST] nmse(R,R)=0.000e+00 nmse(0,R)=1.000e+00" in log
    assert "Backbone: " in log and "Head: " in log and "(4.0×)" in log
    assert "[DIGEST] rank=0 step=24 sha256=" in log


def test_nmse_goes_down(run):
    _, records, _ = run
    val = _kind(records, "val")
    steps = sorted(val)
    assert steps == [8, 16, 24]
    assert val[24]["nmse"] < 0.95 * val[8]["nmse"]


def test_nonfinite_gradient_is_skipped_and_scheduler_does_not_tick(run):
    run_dir, records, log = run
    train = _kind(records, "train")
    assert [s for s, r in train.items() if not r["stepped"]] == [5, 6]
    assert "[GRAD] step=5 norm=nan skip(nonfinite)" in log
    o = load_train_config(run_dir / "config.yaml").optim
    assert (o.lr, o.warmup_floor, o.min_lr_ratio, o.warmup_steps, o.head_lr_mult) == (LR, FLOOR, MIN_RATIO, WARMUP, 4)
    for step, r in train.items():
        # One tick per real step: the LR is a function of real steps only.
        assert r["lr_backbone"] == pytest.approx(expected_lr(r["real_steps"]), rel=1e-6), step
        assert r["lr_head"] == pytest.approx(4 * expected_lr(r["real_steps"]), rel=1e-6), step
    assert train[STEPS]["real_steps"] == STEPS - 2
    assert train[4]["lr_backbone"] == train[6]["lr_backbone"]
    # The shape by hand: warmup starts above the floor, peaks at LR, then decays monotonically.
    assert train[1]["lr_backbone"] == pytest.approx(3.25e-4) and train[7]["real_steps"] == WARMUP + 1
    assert train[3]["lr_backbone"] == pytest.approx(LR * (FLOOR + (1 - FLOOR) * 3 / 4))
    assert train[4]["lr_backbone"] == pytest.approx(LR)
    decay = [train[s]["lr_backbone"] for s in range(6, STEPS + 1)]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(expected_lr(STEPS - 2))


def test_weights_move_after_real_steps_only(run):
    _, records, _ = run
    train = _kind(records, "train")
    assert all(r["delta_param"] > 0 for s, r in train.items() if r["stepped"])
    assert all(r["delta_param"] == 0 for s, r in train.items() if not r["stepped"])


def test_run_folder_contents(run):
    run_dir, _, _ = run
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["loss"]["weights"] == {"lam_cov": 1.0, "lam_k": 0.0, "lam_gap": 0.0, "lam_subspace": 0.0,
                                           "lam_peak": 0.0, "lam_ortho": 0.0,
                                           "lam_locate": 0.0, "lam_null": 0.0}
    assert resolved["max_steps"] == STEPS
    gate = json.loads((run_dir / "gate.json").read_text())
    names = {c["name"] for c in gate["criteria"]}
    assert names == {"selftest_nmse_RR", "selftest_nmse_0R", "selftest_oracle", "val_nmse"}
    for c in gate["criteria"]:
        assert {"value", "reference", "tolerance", "passed"} <= set(c)
    assert (run_dir / "best" / "model.pt").is_file()
    assert any((run_dir / "checkpoints").glob("step-*/COMPLETE"))


def test_tensorboard_scalars_read_back(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, records, _ = run
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/grad_norm", "train/lr_backbone", "train/lr_head", "train/delta_param", "val/nmse",
            "loss/w_nmse", "loss_raw/nmse", "weights/lam_cov", "weights/beta", "selftest/nmse_0R"} <= tags
    val_tb = {e.step: e.value for e in acc.Scalars("val/nmse")}
    val_json = _kind(records, "val")
    assert val_tb.keys() == val_json.keys()
    for step, value in val_tb.items():
        assert value == pytest.approx(val_json[step]["nmse"], rel=1e-6)
