"""Launch real training runs for tests: ``python -m ris_dist.train`` or ``accelerate launch``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))

#: Small, fast tiny-system settings shared by the multi-process tests.
FAST = ["data.train_scenes=96", "data.val_scenes=64", "data.batch_size=32", "data.val_batch_size=64",
        "log.every_steps=1", "log.progress_bar=false", "gate.enforce=false", "checkpoint.every_steps=0"]


@dataclass
class Run:
    returncode: int
    log: str
    run_dir: Path

    def records(self, kind: str) -> dict[int, dict]:
        """metrics.jsonl records of one kind by step (a resumed run's later records win)."""
        out = {}
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["kind"] == kind:
                out[r["step"]] = r
        return out

    def digests(self) -> dict[int, str]:
        return {int(r): d for r, d in re.findall(r"\[DIGEST\] rank=(\d+) step=\d+ sha256=(\w+)", self.log)}

    def skips(self) -> dict[int, list[tuple[int, str]]]:
        """rank -> [(step, reason)] from the per-rank [SKIP] lines."""
        out: dict[int, list[tuple[int, str]]] = {}
        for rank, step, reason in re.findall(r"\[SKIP\] rank=(\d+) step=(\d+) reason=(\w+)", self.log):
            out.setdefault(int(rank), []).append((int(step), reason))
        return out

    def indices(self) -> dict[int, dict[int, list[int]]]:
        """rank -> step -> global scene indices that rank trained on."""
        out: dict[int, dict[int, list[int]]] = {}
        for path in sorted((self.run_dir / "indices").glob("rank*.jsonl")):
            rank = int(path.stem[4:])
            for line in path.read_text().splitlines():
                r = json.loads(line)
                out.setdefault(rank, {})[r["step"]] = r["indices"]
        return out


def command(backend: str | None) -> list[str]:
    if backend is None:
        return [sys.executable, "-m", "ris_dist.train"]
    return [ACCELERATE, "launch", "--config_file", f"configs/accelerate/{backend}.yaml", "-m", "ris_dist.train"]


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session, so :func:`kill_group` reaches every rank it spawns."""
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group of ``proc`` (the launcher and any rank it left behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # every member has already exited


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for ``proc`` and return its output; on timeout kill its whole group, then fail.

    The group is killed after a normal exit too: an orphaned rank must not keep a CI core busy.
    """
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args[:6])} …: no exit after {timeout:.0f} s; killed its process "
                             f"group. Output tail:\n{out[-3000:]}") from None
    finally:
        kill_group(proc)
    return out


def train(out: Path, overrides: list[str], backend: str | None = None, run_name: str = "t",
          config: str = "configs/phase0.yaml", timeout: float = 420, env: dict | None = None) -> Run:
    """Run to completion (hard timeout: a hang fails the test instead of stalling CI)."""
    cmd = command(backend) + ["--config", config, f"output_dir={out}", f"run_name={run_name}", *overrides]
    proc = start(cmd, env)
    log = finish(proc, timeout)
    phase = "phase0" if config.endswith("phase0.yaml") else Path(config).stem
    return Run(proc.returncode, log, out / run_name / phase)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"


def checkpoint_model(run_dir: Path, step: int) -> dict:
    """The live model's weights saved by ``accelerator.save_state`` at optimizer step ``step``."""
    from safetensors.torch import load_file

    return load_file(str(checkpoint_dir(run_dir, step) / "model.safetensors"))


def checkpoint_custom(run_dir: Path, step: int, index: int) -> dict:
    """State of the ``index``-th object registered for checkpointing (0 = scheduler, then EMA, SWA)."""
    import torch

    return torch.load(checkpoint_dir(run_dir, step) / f"custom_checkpoint_{index}.pkl", weights_only=True)
