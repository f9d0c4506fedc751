"""The GPU acceptance script's --smoke run on CPU: every stage runs and its summary says what happened."""

import json
import subprocess
import sys

import pytest

from trainrun import REPO


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    proc = subprocess.run([sys.executable, "-m", "ris_dist.bench", "gpu", "--smoke", "--out", str(out),
                           "--budget-s", "1200"], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "summary.json").read_text()), (out / "summary.md").read_text(), proc


@pytest.mark.slow
def test_smoke_runs_every_stage(smoke):
    summary, markdown, proc = smoke
    assert summary["mode"] == "smoke"
    assert {k: v["status"] for k, v in summary["stages"].items()} == {
        "gates": "ok", "throughput": "ok", "validation": "ok", "curriculum": "ok"}
    assert json.loads(proc.stdout)["stages"]["curriculum"] == "ok"
    for title in ("## Gates (world size 2)", "## Throughput", "## Validation", "## phase0", "## phase1"):
        assert title in markdown


@pytest.mark.slow
def test_smoke_gates_skip_exactly_the_injected_steps_on_every_rank(smoke):
    gates = smoke[0]["stages"]["gates"]
    runs = {(r["backend"], r["amp"]): r for r in gates["runs"]}
    assert set(runs) == {("cpu_ddp", "none"), ("deepspeed_zero2", "bf16"), ("deepspeed_zero3", "fp16")}
    assert runs["deepspeed_zero3", "fp16"]["status"] == "skipped: fp16 needs CUDA under DeepSpeed"
    for key in (("cpu_ddp", "none"), ("deepspeed_zero2", "bf16")):
        run = runs[key]
        assert run["returncode"] == 0 and run["world_size"] == 2 and run["process_group"] == "gloo"
        assert run["skip_steps"] == run["injected_steps"] == [3, 5] and run["skip_count"] == 2
        assert set(run["skips_per_rank"]) == {"0", "1"} and run["gates_agree"] and run["steps"] == 6
        assert len(run["digests"]) == 2 and run["digests_agree"]
    assert runs["deepspeed_zero2", "bf16"]["param_dtype"] == "torch.bfloat16"
    assert runs["cpu_ddp", "none"]["param_dtype"] == "torch.float32"
    # Different precisions train different weights.
    assert runs["cpu_ddp", "none"]["digests"]["0"] != runs["deepspeed_zero2", "bf16"]["digests"]["0"]
    assert gates["all_gates_agree"]


@pytest.mark.slow
def test_smoke_throughput_validation_and_curriculum_figures(smoke):
    stages = smoke[0]["stages"]
    rows = stages["throughput"]["rows"]
    assert [(r["batch"], r["amp"]) for r in rows] == [(8, "none"), (32, "none")]
    for r in rows:
        assert r["scenes_per_s"] > 0 and r["step_s"] == pytest.approx(
            r["simulate_s"] + r["forward_backward_s"] + r["gate_step_s"])
    val = stages["validation"]
    assert val["scenes"] == 256 and val["metrics_untrained_model"]["num_scenes"] == 256 and val["k_source"] == "head"
    assert "success" in val["metrics_untrained_model"]  # MUSIC ran
    phases = stages["curriculum"]["phases"]
    assert list(phases) == ["phase0", "phase1"]
    for phase in phases.values():
        assert phase["returncode"] == 0 and sorted(phase["losses"]) == ["1", "2", "3"] and phase["validations"]
        assert "gate" in phase
    assert all(stage["wall_s"] <= stage["budget_s"] + 30 for stage in stages.values())
