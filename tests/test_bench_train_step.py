"""The train-step benchmark runs end to end and reports its figures (no timing is asserted)."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_train_step_bench_reports_ratio_and_param_counts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ris_dist.bench", "train-step", "--blocks", "1",
                           "--steps-per-block", "2", "--warmup", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["steps_timed_per_side"] == 2 and out["ratio_trainer_over_bare"] > 0
    assert out["gate_skips_during_bench"] == 0
    assert 14e6 < out["param_counts"]["full"]["total"] < 18e6
