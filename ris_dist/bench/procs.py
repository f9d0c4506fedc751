"""Benchmark subprocesses: run commands a few at a time under one deadline, killing what overruns."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_RC = 124


@dataclass
class Proc:
    returncode: int
    log: str
    seconds: float

    def error_line(self) -> str:
        """The last line that says what went wrong (for the summary)."""
        if self.returncode == TIMEOUT_RC:
            return f"timed out after {self.seconds:.0f} s"
        lines = [ln.strip() for ln in self.log.splitlines() if ln.strip()]
        marked = [ln for ln in lines if ln.startswith("error:")] or [
            ln for ln in lines if re.match(r"[\w.]*(Error|Exception)\b:", ln) and "ChildFailedError" not in ln]
        return (marked or lines or [f"exit {self.returncode}"])[-1][:300]


def _spawn(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log_path, "w")
    # Its own session, so a timeout ends the launcher and every rank it started, and nothing else.
    return subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run_all(cmds: list[tuple[list[str], Path]], timeout_s: float, parallel: int,
            env: dict[str, str] | None = None) -> list[Proc]:
    """Run commands, ``parallel`` at a time, all within ``timeout_s``; each one's output goes to its log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    deadline = time.monotonic() + timeout_s
    results: list[Proc | None] = [None] * len(cmds)
    pending = list(range(len(cmds)))
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    while pending or running:
        while pending and len(running) < parallel:
            i = pending.pop(0)
            running[i] = (_spawn(cmds[i][0], cmds[i][1], env), time.monotonic())
        time.sleep(0.5)
        for i, (proc, started) in list(running.items()):
            rc = proc.poll()
            if rc is None and time.monotonic() < deadline:
                continue
            if rc is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = TIMEOUT_RC
            results[i] = Proc(rc, cmds[i][1].read_text(errors="replace"), time.monotonic() - started)
            del running[i]
        if time.monotonic() >= deadline:
            for i in pending:
                results[i] = Proc(TIMEOUT_RC, "not started: stage budget spent", 0.0)
            pending = []
    return [r for r in results if r is not None]
