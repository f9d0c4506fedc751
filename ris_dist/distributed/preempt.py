"""Preemption: signal handlers only set a flag; the flag is agreed on at step boundaries.

SLURM sends SIGUSR1/SIGUSR2 (``--signal``) or SIGTERM before it kills or requeues a job.
A handler must not touch collectives or files, so it records the request; every rank then
MAX-reduces the flag at each step boundary (an unconditional collective), and all ranks
save together and exit with ``EXIT_REQUEUE``.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class PreemptionFlag:
    def __init__(self, install: bool = True):
        self.requested = False
        self.signum: int | None = None
        if install:
            for sig in SIGNALS:
                signal.signal(sig, self._handler)

    def _handler(self, signum, frame) -> None:
        self.trigger(signum)

    def trigger(self, signum: int) -> None:
        """Record a preemption request (what the handler does; drills call it directly)."""
        self.requested = True
        self.signum = int(signum)

    def synced_signal(self) -> int:
        """The signal any rank received (0 if none), the same on every rank. Collective: call on all ranks."""
        flag = torch.tensor([float(self.signum or (1 if self.requested else 0))])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                flag = flag.cuda()
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
