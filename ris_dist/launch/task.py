"""The submitit job of one phase: a Checkpointable that supervises the per-node command.

On preemption or timeout the trainer saves (synced, all ranks) and exits 75; then submitit's
own USR2 handler runs ``checkpoint()`` and ``scontrol requeue``. The requeued job runs this
same callable again, and the trainer resumes from its latest valid checkpoint. ``checkpoint()``
returns None (no requeue, the job fails) once SLURM_RESTART_COUNT reached ``max_requeues``.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import submitit

from .command import Arg, gate_status, port_for_job, resolve
from .supervise import Supervisor


class PhaseFailed(RuntimeError):
    """The phase's command exited non-zero (bad input, failed gate, crash)."""


class PhaseTask(submitit.helpers.Checkpointable):
    def __init__(self, phase: int, argv: list[Arg], root: str, run_dir: str, max_requeues: int,
                 signal_delay_s: int, launcher: bool):
        self.phase, self.argv, self.root, self.run_dir = phase, argv, root, run_dir
        self.max_requeues, self.signal_delay_s, self.launcher = max_requeues, signal_delay_s, launcher

    def node_values(self) -> dict[str, str]:
        env = submitit.JobEnvironment()
        return {"NODE_RANK": str(env.node), "MAIN_IP": env.hostnames[0], "MAIN_PORT": str(port_for_job(env.raw_job_id))}

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        argv = resolve(self.argv, self.node_values())
        print(f"[launch] phase {self.phase} job {env.job_id} node {env.node}/{env.num_nodes} restart {restarts} "
              f"start {time.time():.3f}: {shlex.join(argv)}", flush=True)
        sup = Supervisor(argv, self.root, grace_s=max(10, self.signal_delay_s - 20), launcher=self.launcher)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        rc, preempted = sup.run(wait_for_signal_s=15.0)
        print(f"[launch] phase {self.phase} command exited {rc} (preempted={preempted}) at {time.time():.3f}",
              flush=True)
        if preempted:
            if env.global_rank != 0:
                time.sleep(max(60, self.signal_delay_s))  # task 0 requeues the whole job
                raise PhaseFailed(f"phase {self.phase}: preempted and not requeued")
            if callable(submitit_handler):
                # submitit's handler: checkpoint() -> dump -> scontrol requeue -> exit,
                # or UncompletedJobError when no requeue is left.
                submitit_handler(signal.SIGUSR2, None)
            raise PhaseFailed(f"phase {self.phase}: preempted, no requeue handler")
        if rc != 0:
            passed = gate_status(Path(self.run_dir))
            why = {True: " (gate passed)", False: " (phase gate FAILED)", None: ""}[passed]
            raise PhaseFailed(f"phase {self.phase}: training command exited {rc}{why}")
        gate = Path(self.run_dir) / "gate.json"
        return {"phase": self.phase, "gate": json.loads(gate.read_text()) if gate.is_file() else None}

    def checkpoint(self, *args, **kwargs):
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeues:
            print(f"[launch] phase {self.phase}: {restarts} requeues used (max_requeues={self.max_requeues}); "
                  "not requeuing", file=sys.stderr, flush=True)
            return None
        print(f"[launch] phase {self.phase}: requeue {restarts + 1}/{self.max_requeues} at {time.time():.3f}",
              flush=True)
        return submitit.helpers.DelayedSubmission(self)
