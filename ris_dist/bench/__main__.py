"""``python -m ris_dist.bench <name> [options]``: run one benchmark and print its result as JSON.

Submodules are imported lazily by name, so a benchmark that is not written yet (or whose
dependencies are missing) only fails when it is asked for, with a one-line error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
from types import ModuleType

from . import BENCHES

log = logging.getLogger("ris_dist.bench")


class BenchUnavailable(Exception):
    """The named benchmark does not exist or its module cannot be imported."""


def load_bench(name: str) -> ModuleType:
    """Import the benchmark module for ``name``; a missing one raises :class:`BenchUnavailable`."""
    module_name = BENCHES.get(name)
    if module_name is None:
        raise BenchUnavailable(f"bench {name!r} is not available (known: {', '.join(BENCHES)})")
    full = f"{__package__}.{module_name}"
    try:
        module = importlib.import_module(full)
    except ModuleNotFoundError as err:
        # Only the benchmark's own module missing means "not written yet"; a missing
        # dependency inside it is a different problem and keeps its name in the message.
        if err.name == full:
            raise BenchUnavailable(f"bench {name!r} is not available") from None
        raise BenchUnavailable(f"bench {name!r} is not available: {err}") from None
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise BenchUnavailable(f"bench {name!r} is not available: {full} has no {attr}()")
    return module


def main(argv: list[str] | None = None) -> int:
    """Parse ``<name> [options]``, run the benchmark, print its JSON; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m ris_dist.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    try:
        module = load_bench(name)
    except BenchUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"python -m ris_dist.bench {name}",
                                     description=(module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else None)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    # stdout carries the JSON alone: libraries that log to stdout at import (DeepSpeed) go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        result = module.run(args)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
