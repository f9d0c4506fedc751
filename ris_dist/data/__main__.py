"""Command line for frozen splits.

    python -m ris_dist.data generate --system tiny --split test --num-scenes 1000 --out DIR \
        [--seed 0] [--shard-size 4096] [--device cpu]
    python -m ris_dist.data verify DIR

Results go to stdout as one line; a DataError or ConfigError prints ``error: <message>``
to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..config import ConfigError, load_system
from .shards import DataError, load_split, write_split

EXIT_DATA_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ris_dist.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="simulate a split and freeze it into checksummed shards")
    gen.add_argument("--system", default="tiny", help="system config name (tiny, full) or YAML path")
    gen.add_argument("--split", required=True, help="split name, e.g. train, val, test")
    gen.add_argument("--num-scenes", type=int, required=True, help="scenes 0..N-1 are written")
    gen.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    gen.add_argument("--seed", type=int, default=0, help="dataset seed")
    gen.add_argument("--shard-size", type=int, default=4096, help="scenes per shard folder")
    gen.add_argument("--batch-size", type=int, default=256, help="scenes simulated per call")
    gen.add_argument("--device", default=None, help="device to simulate on (default: cpu)")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ver = sub.add_parser("verify", help="check a frozen split's manifest, sizes and sha256")
    ver.add_argument("dir", help="split folder holding manifest.json")
    return parser


def _run(args: argparse.Namespace) -> str:
    if args.command == "generate":
        system = load_system(args.system)
        m = write_split(system, args.seed, args.split, args.num_scenes, args.out, shard_size=args.shard_size,
                        device=args.device, progress=not args.no_progress, batch_size=args.batch_size)
        return (f"wrote {args.out}: {m['count']} scenes in {len(m['shards'])} shards, system {system.name}, "
                f"split {args.split}, seed {args.seed}, {m['total_bytes']} bytes "
                f"({m['bytes_per_scene']:.0f} bytes/scene)")
    split = load_split(args.dir, verify=True)
    m = split.manifest
    return (f"OK {args.dir}: {len(split)} scenes in {len(m['shards'])} shards, system {split.system.name}, "
            f"split {split.split}, seed {split.seed}, {m['total_bytes']} bytes, sha256 verified")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = _run(args)
    except (DataError, ConfigError) as err:
        # Expected user-facing failures: one line, no traceback. Anything else propagates.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_DATA_ERROR
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
