"""Run ``ris_dist.train`` while counting host reads and collectives per optimizer step.

``python tests/sync_probe.py --config … overrides`` or under ``accelerate launch``; each rank
writes ``$SYNC_PROBE_OUT/rank<R>.json``: for every step, the host reads (``item``, ``bool``,
``float``, ``int``, ``tolist``, ``cpu``) and the ``torch.distributed`` collectives issued
from ``ris_dist`` code, each with its call site. Reads made inside torch, Accelerate or
DeepSpeed are theirs and not counted (Adam's CPU step counter, for one). Not counted either:
``numpy()``, which works on CPU tensors only and so never waits for a device, and
``.to(device)``, which on this CPU-only machine cannot be told from a host-to-device copy.
Events are charged to the step whose ``step_once`` ran last. It also records the timeout of
the process group in force (``pg_timeout_s``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "cpu")
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce",
               "barrier")
PACKAGE = os.sep + "ris_dist" + os.sep

events: dict[int, dict[str, list]] = {}
current = {"step": 0}


def _site(depth: int = 2) -> str | None:
    frame = sys._getframe(depth)
    name = frame.f_code.co_filename
    if PACKAGE not in name:
        return None
    return f"{name.split(PACKAGE, 1)[1]}:{frame.f_lineno}"


def _record(kind: str, what: str) -> None:
    site = _site(3)
    if site is not None:
        events.setdefault(current["step"], {"reads": [], "collectives": []})[kind].append(f"{what}@{site}")


def _wrap_read(name: str):
    orig = getattr(torch.Tensor, name)

    def wrapper(self, *args, **kwargs):
        _record("reads", name)
        return orig(self, *args, **kwargs)

    setattr(torch.Tensor, name, wrapper)


def _wrap_collective(name: str):
    orig = getattr(dist, name)

    def wrapper(*args, **kwargs):
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get("tensor")
        _record("collectives", f"{name}[{tensor.device.type if tensor is not None else '-'}]")
        return orig(*args, **kwargs)

    setattr(dist, name, wrapper)


def main() -> None:
    from ris_dist.train import __main__ as cli
    from ris_dist.train import trainer as trainer_module
    from ris_dist.train.trainer import Trainer

    step_once = Trainer.step_once

    def counted_step_once(self, micro):
        current["step"] = self.state.step + 1
        current["device"] = self.accelerator.device.type
        return step_once(self, micro)

    Trainer.step_once = counted_step_once
    for name in READS:
        _wrap_read(name)
    for name in COLLECTIVES:
        _wrap_collective(name)
    timeout_s = {}
    make = trainer_module.make_accelerator

    def make_and_read_timeout(*args, **kwargs):
        acc = make(*args, **kwargs)
        if dist.is_initialized():
            group = dist.group.WORLD._get_backend(acc.device)
            timeout_s["value"] = group.options._timeout.total_seconds()
        return acc

    trainer_module.make_accelerator = make_and_read_timeout
    code = cli.main(sys.argv[1:])
    out = Path(os.environ["SYNC_PROBE_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    (out / f"rank{rank}.json").write_text(json.dumps({"device": current.get("device"), "exit_code": code,
                                                      "pg_timeout_s": timeout_s.get("value"),
                                                      "steps": {str(k): v for k, v in events.items()}}))
    cli._shutdown(code)


if __name__ == "__main__":
    main()
