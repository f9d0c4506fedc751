"""``accelerate launch -m ris_dist.train --config configs/phase0.yaml [dotted.key=value ...]``.

Also runs as plain ``python -m ris_dist.train ...`` on one process. Exit codes:
0 done (gate passed or not enforced), 1 an error on this rank (its traceback, then one
``error: rank R: ...`` line), 2 bad input (config, checkpoint), 3 gate failed,
75 preempted (checkpoint saved; requeue).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch.distributed as dist

from ..config import ConfigError
from .checkpoint import CheckpointError
from .config import load_train_config

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ris_dist.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="phase YAML (path, or a name under configs/ like phase0)")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, values parsed as YAML")
    return p


def _shutdown(code: int) -> None:
    """Leave without the C++ 'terminate called without an active exception' abort at exit.

    Multi-process CPU runs sometimes abort in static destructors after a clean run; tearing
    the process group down and leaving with os._exit makes the exit code the run's own.
    Bad input can be one rank's alone, so that exit skips the barrier the others would
    never join.
    """
    if code != EXIT_BAD_INPUT and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _leave(code)


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(err: BaseException) -> None:
    """An error on one rank: say what it was and leave at once, with no collective.

    The other ranks are (or will be) waiting in a collective this rank never joins; the
    launcher sees this exit and stops them, and ``dist.timeout_s`` bounds their wait
    wherever a dead peer is not noticed by itself (NCCL).
    """
    logging.getLogger("ris_dist.train").exception("training failed")
    rank = os.environ.get("RANK", "0")
    print(f"error: rank {rank}: {type(err).__name__}: {' '.join(str(err).split())}", file=sys.stderr)
    _leave(EXIT_FAILED)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_train_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from ..distributed.preempt import PreemptionFlag
    from .trainer import Trainer  # heavy imports after the config is known to be good

    preempt = PreemptionFlag()  # before the slow set-up, so an early signal is not lost
    try:
        return Trainer(cfg, preempt=preempt).run()
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    try:
        exit_code = main()
    except Exception as error:  # noqa: BLE001 - reported by _fail, which exits non-zero
        _fail(error)
    _shutdown(exit_code)
