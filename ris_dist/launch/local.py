"""``--cluster local``: the same phase chain as subprocesses on this machine, in sequence."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from ..exit_codes import EXIT_GATE_FAILED, EXIT_REQUEUE
from .command import PhaseRequest, gate_status, resolve, to_shell, train_command
from .profile import ClusterProfile
from .supervise import Supervisor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(profile: ClusterProfile, req: PhaseRequest, root: Path, python: str) -> int:
    env = {**os.environ, **profile.env}
    for phase in req.phases:
        argv = resolve(train_command(phase, profile, req, python),
                       {"NODE_RANK": "0", "MAIN_IP": "127.0.0.1", "MAIN_PORT": str(free_port())})
        print(f"[local] phase {phase}: {to_shell(argv)}", flush=True)
        sup = Supervisor(argv, root, env=env, grace_s=profile.signal_delay_s, launcher=profile.engine != "single")
        rc, preempted = sup.run()
        if preempted or rc == EXIT_REQUEUE:
            print(f"[local] phase {phase}: interrupted (checkpoint saved); rerun the same command to resume",
                  file=sys.stderr, flush=True)
            return EXIT_REQUEUE
        if rc != 0:
            # The exit code, not gate.json, says why: a stale gate.json of an earlier attempt may be there.
            why = " (phase gate failed)" if rc == EXIT_GATE_FAILED else ""
            print(f"error: phase {phase} exited {rc}{why}; later phases not started", file=sys.stderr, flush=True)
            return rc if rc > 0 else 1
        gate = gate_status(req.run_dir(root, phase))
        print(f"[local] phase {phase}: done, gate {'passed' if gate else 'not passed' if gate is False else 'n/a'}",
              flush=True)
    return 0
