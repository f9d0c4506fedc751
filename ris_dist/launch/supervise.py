"""Run the training command as a child and turn preemption signals into a synced save.

The node task (submitit's process on SLURM) starts the trainer in its own session. SLURM's
``--signal`` (USR2), a preemption (USR2 / SIGTERM) or ``scancel --signal`` set a flag here;
the flag is forwarded as SIGUSR1 to every ``ris_dist.train`` process below the child, whose
handler makes all ranks save a checkpoint at the next step boundary and exit 75. The launcher
process of ``accelerate launch`` starts with USR1/USR2 ignored (it would die on them and
orphan the ranks); the ranks install their own handlers, which replace the inherited SIG_IGN.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .command import REQUEUE_EXIT

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


def _ignore_user_signals() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def descendants(pid: int) -> list[int]:
    """pids below ``pid`` (from /proc; torch's elastic agent starts ranks in new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _is_trainer(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"ris_dist.train" in cmd


class Supervisor:
    """Run ``argv``; on a preemption signal forward SIGUSR1 to the trainer ranks and wait for them."""

    def __init__(self, argv: list[str], cwd: str | Path, env: dict[str, str] | None = None,
                 grace_s: float = 90.0, launcher: bool = False):
        self.argv, self.cwd, self.env = argv, str(cwd), env
        self.grace_s = max(10.0, grace_s)
        self.launcher = launcher
        self.signum: int | None = None
        self.signalled_at: float | None = None
        self.proc: subprocess.Popen | None = None
        self.saved_handlers: dict[int, object] = {}

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT and self.proc is not None:
            self._kill_tree(signal.SIGKILL)  # second Ctrl-C: stop now
        if self.signum is None or signum == signal.SIGUSR2:
            self.signum = signum
        if self.signalled_at is None:
            self.signalled_at = time.monotonic()

    def install(self) -> None:
        # SIGINT too: the child runs in its own session, so Ctrl-C reaches only this process;
        # the first one makes the trainer save and stop, a second one kills it.
        for sig in (*PREEMPT_SIGNALS, signal.SIGINT):
            self.saved_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        for sig, handler in self.saved_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def forward(self) -> None:
        assert self.proc is not None
        targets = [self.proc.pid] + descendants(self.proc.pid)
        for pid in targets:
            if _is_trainer(pid):
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    pass

    def _kill_tree(self, sig: int) -> None:
        assert self.proc is not None
        for pid in [self.proc.pid] + descendants(self.proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def run(self, wait_for_signal_s: float = 0.0) -> tuple[int, bool]:
        """Returns (exit code, preempted). ``wait_for_signal_s``: after a 75 exit with no signal
        seen yet, wait this long for the scheduler's own signal (it may come right after)."""
        self.install()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, start_new_session=True,
                                     preexec_fn=_ignore_user_signals if self.launcher else None)
        last_forward, killed = 0.0, 0
        try:
            while True:
                rc = self.proc.poll()
                if rc is not None:
                    break
                now = time.monotonic()
                if self.signalled_at is not None:
                    if now - last_forward > 5.0:
                        print(f"[launch] preemption signal {self.signum}: asking the trainer to save",
                              file=sys.stderr, flush=True)
                        self.forward()
                        last_forward = now
                    if killed == 0 and now - self.signalled_at > self.grace_s:
                        print("[launch] trainer did not exit in time: SIGTERM", file=sys.stderr, flush=True)
                        self._kill_tree(signal.SIGTERM)
                        killed = 1
                    elif killed == 1 and now - self.signalled_at > self.grace_s + 20:
                        self._kill_tree(signal.SIGKILL)
                        killed = 2
                time.sleep(0.2)
            if rc == REQUEUE_EXIT and self.signalled_at is None and wait_for_signal_s > 0:
                deadline = time.monotonic() + wait_for_signal_s
                while self.signalled_at is None and time.monotonic() < deadline:
                    time.sleep(0.2)
            return rc, (self.signalled_at is not None or rc == REQUEUE_EXIT)
        finally:
            self.restore()
