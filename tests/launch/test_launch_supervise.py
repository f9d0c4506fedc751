"""Supervisor: a preemption signal reaches the trainer ranks the launcher started, and nothing else.

A real process tree shaped like ``accelerate launch``: a launcher child (USR1/USR2 ignored) that
starts two ranks in new sessions (as torch's elastic agent does); one rank starts a helper
whose SIGUSR1 has the default action (like a compile worker), which the signal would kill.
The ranks are plain scripts, not ``ris_dist.train``, so nothing can be found by command line.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil

from ris_dist.exit_codes import EXIT_REQUEUE
from ris_dist.launch.supervise import Supervisor

RANK = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    out, index = sys.argv[1], sys.argv[2]
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
    if index == "0":  # a helper of this rank: exec resets the handled SIGUSR1 to its default action
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open(f"{out}/helper", "w").write(str(helper.pid))
    open(f"{out}/ready-{os.getpid()}", "w").close()
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    open(f"{out}/saved-{os.getpid()}", "w").close()
    sys.exit(75 if got else 1)
""")

LAUNCHER = textwrap.dedent("""
    import subprocess, sys
    rank, out = sys.argv[1], sys.argv[2]
    ranks = [subprocess.Popen([sys.executable, rank, out, str(i)], start_new_session=True) for i in range(2)]
    sys.exit(max(r.wait() for r in ranks))
""")


def _signal_when_ready(out: Path, n: int, sig: int) -> None:
    deadline = time.monotonic() + 60
    while len(list(out.glob("ready-*"))) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), sig)


def test_preemption_signal_reaches_only_the_ranks(tmp_path):
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    argv = [sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "rank.py"), str(tmp_path)]
    sup = Supervisor(argv, tmp_path, grace_s=10, launcher=True)
    threading.Thread(target=_signal_when_ready, args=(tmp_path, 2, signal.SIGUSR2), daemon=True).start()
    rc, preempted = sup.run()
    helper_pid = int((tmp_path / "helper").read_text())
    helper_alive = psutil.pid_exists(helper_pid) and psutil.Process(helper_pid).status() != psutil.STATUS_ZOMBIE
    if helper_alive:
        psutil.Process(helper_pid).kill()
    assert rc == EXIT_REQUEUE and preempted  # both ranks saw SIGUSR1 and exited 75
    ready = {p.name.split("-")[1] for p in tmp_path.glob("ready-*")}
    saved = {p.name.split("-")[1] for p in tmp_path.glob("saved-*")}
    assert len(ready) == 2 and saved == ready
    assert helper_alive  # SIGUSR1 would have killed it: it was not signalled
