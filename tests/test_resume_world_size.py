"""A ZeRO checkpoint resumes only on the world size and backend that wrote it; it says so in one line.

2 CPU ranks of DeepSpeed ZeRO-2 save; 1 rank resumes (under DeepSpeed, then as a plain
process). DDP checkpoints resuming on another world size are covered by
tests/test_resume.py::test_resume_on_a_different_world_size_continues_the_stream.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from trainrun import ACCELERATE, FAST, REPO, train

EXIT_BAD_INPUT = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    run = train(out, FAST + ["max_steps=2"], backend="deepspeed_zero2", timeout=900)
    assert run.returncode == 0, run.log[-4000:]
    state = json.loads((run.run_dir / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["backend"] == "deepspeed"
    return out


def _resume(out, launcher: list[str]) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={out}", "run_name=t",
           *FAST, "max_steps=4"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_zero_checkpoint_on_another_world_size_stops_with_how_to_convert(saved):
    proc = _resume(saved, [ACCELERATE, "launch", "--config_file", "configs/accelerate/deepspeed_zero2.yaml",
                           "--num_processes", "1"])
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    line = re.search(r"error: .*trainer_state\.json: a DeepSpeed ZeRO checkpoint saved on 2 processes cannot "
                     r"resume on 1; .*zero_to_fp32\.py.*init_from=", log)
    assert line, log[-4000:]
    assert re.search(r"exitcode\s*:\s*2\b", log), log[-2000:]  # the child's own exit code, under torchrun


@pytest.mark.slow
def test_zero_checkpoint_resumed_by_another_backend_stops_with_exit_2(saved):
    proc = _resume(saved, [sys.executable])
    assert proc.returncode == EXIT_BAD_INPUT, (proc.stdout + proc.stderr)[-4000:]
    assert re.search(r"error: .*trainer_state\.json: saved by backend deepspeed on 2 process\(es\), resumed with "
                     r"torch; .*init_from=", proc.stderr)
