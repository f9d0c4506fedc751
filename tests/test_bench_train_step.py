"""The train-step benchmark runs end to end and reports its figures (no timing is asserted)."""

import json
import subprocess
import sys

import pytest


def _bench(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "ris_dist.bench", "train-step", *args], capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_train_step_bench_times_both_sides_on_the_same_scenes():
    out = _bench("--blocks", "1", "--steps-per-block", "2", "--warmup", "1")
    assert out["steps_timed_per_side"] == {"trainer": 2, "bare": 2}
    assert out["scenes_sha256"]["trainer"] == out["scenes_sha256"]["bare"]
    med = out["median_step_s"]
    assert out["ratio_trainer_over_bare"] == pytest.approx(med["trainer"] / med["bare"])
    assert out["meets_target"] == (out["ratio_trainer_over_bare"] <= out["target_ratio"])
    assert out["gate_skips_during_bench"] == 0
    assert 14e6 < out["param_counts"]["full"]["total"] < 18e6


@pytest.mark.slow
def test_train_step_bench_compares_deepspeed_with_ddp_on_two_processes():
    out = _bench("--backend", "deepspeed_zero2", "--blocks", "1", "--steps-per-block", "2", "--warmup", "1")
    assert out["compare"] == "deepspeed_zero2 / cpu_ddp" and out["world_size"] == 2
    assert out["steps_timed_per_side"] == {"cpu_ddp": 2, "deepspeed_zero2": 2}
    assert out["scenes_sha256"]["cpu_ddp"] == out["scenes_sha256"]["deepspeed_zero2"]
    assert out["gate_skips"] == {"cpu_ddp": 0, "deepspeed_zero2": 0}
    med = out["median_step_s"]
    assert out["ratio_deepspeed_over_ddp"] == pytest.approx(med["deepspeed_zero2"] / med["cpu_ddp"])
