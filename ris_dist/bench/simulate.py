"""Scene generation throughput (scenes/s, with R_samp) in one CPU process: batched torch vs numpy loops.

The batched path is :func:`ris_dist.physics.simulate`, timed end to end (random draws
included) after a warm-up batch. The baseline is :mod:`ris_dist.bench.numpy_reference`,
timed on its per-scene loop only (its draws are made beforehand from the same counter-based
streams), so the reported speed-up is a lower bound. Both run in the same process on the
same scene indices, and the result also reports how far the two disagree on those scenes.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from typing import Any

import numpy as np
import torch

from ..config import load_system, parse_overrides, to_dict
from ..physics import simulate
from .numpy_reference import draw_inputs, element_positions, reference_scene

log = logging.getLogger(__name__)

TARGET_SPEEDUP = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of this benchmark."""
    parser.add_argument("--system", default="full", help="system config name or YAML path (default: full)")
    parser.add_argument("--batch-size", type=int, default=256, help="scenes per simulate() call")
    parser.add_argument("--num-scenes", type=int, default=2048, help="scenes timed on the batched path")
    parser.add_argument("--reference-scenes", type=int, default=8, help="scenes timed on the numpy reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="bench")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("overrides", nargs="*", help="system overrides, dotted.key=value")


def _time_batched(system, batch_size: int, num_scenes: int, seed: int, split: str) -> tuple[float, int]:
    # Warm-up: first-call allocations, codebook cache, kernel selection.
    simulate(system, range(batch_size), seed=seed, split=split)
    done, start = 0, time.perf_counter()
    while done < num_scenes:
        n = min(batch_size, num_scenes - done)
        batch = simulate(system, range(done, done + n), seed=seed, split=split)
        # R_samp is part of the result: touch it so nothing could be skipped lazily.
        assert batch.R_samp.shape[0] == n
        done += n
    return time.perf_counter() - start, done


def _time_reference(system, num_scenes: int, seed: int, split: str) -> tuple[float, list]:
    scenes = draw_inputs(system, range(num_scenes), seed, split)  # untimed (see module docstring)
    positions = element_positions(system)
    start = time.perf_counter()
    outputs = [reference_scene(system, s, positions) for s in scenes]
    return time.perf_counter() - start, outputs


def _max_rel_error(system, outputs: list, seed: int, split: str) -> dict[str, float]:
    batch = simulate(system, range(len(outputs)), seed=seed, split=split)
    errs: dict[str, float] = {}
    for name in ("y", "R_samp", "R_true"):
        rel = [float(np.linalg.norm(getattr(batch, name)[b].numpy() - getattr(o, name)) / np.linalg.norm(getattr(o, name)))
               for b, o in enumerate(outputs)]
        errs[name] = max(rel)
    return errs


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark and return its JSON-able result."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    system = load_system(args.system, **parse_overrides(args.overrides))
    log.info("system %s: N=%d M=%d L=%d K_max=%d; batched %d scenes (batch %d), reference %d scenes",
             system.name, system.num_elements, system.num_bs_antennas, system.num_snapshots, system.max_sources,
             args.num_scenes, args.batch_size, args.reference_scenes)

    batched_s, batched_n = _time_batched(system, args.batch_size, args.num_scenes, args.seed, args.split)
    ref_s, outputs = _time_reference(system, args.reference_scenes, args.seed, args.split)
    batched_rate = batched_n / batched_s
    ref_rate = len(outputs) / ref_s
    speedup = batched_rate / ref_rate
    return {
        "bench": "simulate",
        "system": system.name,
        "batched": {"scenes": batched_n, "batch_size": args.batch_size, "seconds": round(batched_s, 4),
                    "scenes_per_s": round(batched_rate, 2), "timing": "end to end incl. random draws, after 1 warm-up batch"},
        "numpy_reference": {"scenes": len(outputs), "seconds": round(ref_s, 4), "scenes_per_s": round(ref_rate, 3),
                            "timing": "per-scene loops only; random draws made beforehand (untimed)"},
        "speedup": round(speedup, 1),
        "target_speedup": TARGET_SPEEDUP,
        "meets_target": speedup >= TARGET_SPEEDUP,
        "max_rel_error_vs_reference": _max_rel_error(system, outputs, args.seed, args.split),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "config": to_dict(system),
    }
