"""Preemption: signal handlers only set a flag; the flag is agreed on at step boundaries.

SLURM sends SIGUSR1/SIGUSR2 (``--signal``) or SIGTERM before it kills or requeues a job.
A handler must not touch collectives or files, so it records the request; every rank then
contributes :meth:`PreemptionFlag.local_signal` to the step gate's MAX all-reduce (an
unconditional collective that runs anyway, so the flag costs no extra collective or host
sync), and all ranks save together and exit with ``EXIT_REQUEUE`` (:mod:`ris_dist.exit_codes`).
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

    def local_signal(self) -> int:
        """This rank's recorded signal (1 for a request without one), 0 if none; no collective."""
        return int(self.signum or (1 if self.requested else 0))

    def synced_signal(self, device: torch.device | str = "cpu") -> int:
        """The signal any rank received (0 if none), the same on every rank. Collective: call on all ranks.

        The training loop does not call it (the gate carries the flag); ``device`` must be the
        backend's (``accelerator.device``), because NCCL reduces CUDA tensors only.
        """
        flag = torch.tensor([float(self.local_signal())], device=device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())
