"""Run the training command as a child and turn preemption signals into a synced save.

The node task (submitit's process on SLURM) starts the command in a session of its own.
SLURM's ``--signal`` (USR2), a preemption (USR2 / SIGTERM) or ``scancel --signal`` set a flag
here; the flag is forwarded as SIGUSR1 to the trainer ranks, whose handler makes all ranks save
a checkpoint at the next step boundary and exit 75.

The ranks are found among the processes this supervisor started: its own child and that
child's descendants (psutil; torch's elastic agent starts each rank in a new session, so the
child's process group does not reach them). Of those, only processes that have a SIGUSR1
handler installed are signalled: the ranks install one (ris_dist/distributed/preempt.py), while
the ``accelerate launch`` process starts with USR1/USR2 ignored (it would die on them and orphan
the ranks), and helpers a rank starts (compile workers, spawned data workers) get SIGUSR1's
default action back at exec, so the signal would kill them.
A rank that has not installed its handler yet is skipped and reached by the next forward.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ..exit_codes import EXIT_REQUEUE

PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
FORWARD_EVERY_S = 5.0


def _ignore_user_signals() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its live descendants; empty once ``pid`` has exited."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:  # the child exited between poll() and here: nothing left to signal
        return []


def catches(proc: psutil.Process, sig: int) -> bool:
    """Whether ``proc`` has a handler installed for ``sig`` (the SigCgt mask of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # exited since the tree was listed
        return False
    mask = re.search(r"^SigCgt:\s*([0-9a-fA-F]+)$", status, re.M)
    if mask is None:
        raise RuntimeError(f"/proc/{proc.pid}/status has no SigCgt line")
    return bool(int(mask.group(1), 16) >> (sig - 1) & 1)


def _send(procs: list[psutil.Process], sig: int) -> list[int]:
    sent = []
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the pid was not reused since the listing
            sent.append(proc.pid)
        except psutil.NoSuchProcess:  # exited since the tree was listed
            continue
    return sent


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

    def forward(self) -> list[int]:
        """SIGUSR1 to every process of the child's tree that handles it; returns their pids."""
        assert self.proc is not None
        return _send([p for p in process_tree(self.proc.pid) if catches(p, signal.SIGUSR1)], signal.SIGUSR1)

    def _kill_tree(self, sig: int) -> None:
        assert self.proc is not None
        _send(process_tree(self.proc.pid), sig)

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
                    if now - last_forward > FORWARD_EVERY_S:
                        pids = self.forward()
                        print(f"[launch] preemption signal {self.signum}: asked the trainer to save "
                              f"(SIGUSR1 to pids {pids})", file=sys.stderr, flush=True)
                        last_forward = now
                    if killed == 0 and now - self.signalled_at > self.grace_s:
                        print("[launch] trainer did not exit in time: SIGTERM", file=sys.stderr, flush=True)
                        self._kill_tree(signal.SIGTERM)
                        killed = 1
                    elif killed == 1 and now - self.signalled_at > self.grace_s + 20:
                        self._kill_tree(signal.SIGKILL)
                        killed = 2
                time.sleep(0.2)
            if rc == EXIT_REQUEUE and self.signalled_at is None and wait_for_signal_s > 0:
                deadline = time.monotonic() + wait_for_signal_s
                while self.signalled_at is None and time.monotonic() < deadline:
                    time.sleep(0.2)
            return rc, (self.signalled_at is not None or rc == EXIT_REQUEUE)
        finally:
            self.restore()
