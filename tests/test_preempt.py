"""Real signals: the handler only sets a flag; all ranks save at the next step and exit for requeue."""

import contextlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from trainrun import FAST, command, finish, kill_group, start

EXIT_REQUEUE = 75


def _start(out: Path, backend, tag: str):
    cmd = command(backend) + ["--config", "configs/phase0.yaml", f"output_dir={out}", "run_name=t",
                              "max_steps=100000", "data.train_scenes=4096", *FAST]
    return start(cmd, env={"RIS_TEST_TAG": tag})


def _wait_for_step(run_dir: Path, step: int, proc, deadline_s: float = 180) -> None:
    end = time.monotonic() + deadline_s
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < end:
        assert proc.poll() is None, f"training exited {proc.returncode} before step {step}: " + finish(proc, 30)[-3000:]
        if metrics.exists() and any(json.loads(line).get("kind") == "train" and json.loads(line)["step"] >= step
                                    for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.5)
    raise AssertionError(f"training did not reach step {step} in {deadline_s:.0f} s")


def _rank_pid(tag: str, rank: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if f"RIS_TEST_TAG={tag}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    raise AssertionError(f"no process with rank {rank}")


@contextlib.contextmanager
def _running(out: Path, backend, tag: str):
    """A training run that never outlives the test: its whole process group is killed on the way out."""
    proc = _start(out, backend, tag)
    try:
        yield proc
    finally:
        kill_group(proc)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
def test_sigusr1_saves_and_exits_for_requeue(tmp_path):
    with _running(tmp_path, None, uuid.uuid4().hex) as proc:
        run_dir = tmp_path / "t" / "phase0"
        _wait_for_step(run_dir, 2, proc)
        proc.send_signal(signal.SIGUSR1)
        out = finish(proc, timeout=120)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker["signal"] == signal.SIGUSR1
    assert (run_dir / "checkpoints" / f"step-{marker['step']:08d}" / "COMPLETE").is_file()


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_on_all_ranks(tmp_path):
    tag = uuid.uuid4().hex
    with _running(tmp_path, "cpu_ddp", tag) as proc:
        run_dir = tmp_path / "t" / "phase0"
        _wait_for_step(run_dir, 2, proc)
        os.kill(_rank_pid(tag, 1), signal.SIGTERM)
        out = finish(proc, timeout=120)
    assert proc.returncode != 0  # torchrun reports the requeue exit of its children as a failure
    assert out.count("preemption requested: saving at step") == 2, out[-3000:]
    marker = json.loads((run_dir / "preempted.json").read_text())
    assert marker["signal"] == signal.SIGTERM
    ckpt = run_dir / "checkpoints" / f"step-{marker['step']:08d}"
    assert (ckpt / "COMPLETE").is_file()
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                         "random_states_1.pkl"]
