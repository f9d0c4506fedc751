"""Throughput on 1 vs 2 CPU processes (and 1..N GPUs when present), and per-rank peak RSS vs dataset size.

Every figure comes from real training runs launched in this run: ``python -m ris_dist.train``
for one process, ``accelerate launch`` with configs/accelerate/cpu_ddp.yaml (gloo) or ddp.yaml
(NCCL) for more. Samples/s is measured between two logged steps, so start-up and the first
steps are excluded. Peak RSS is rank 0's ``ru_maxrss`` at the last logged step; scenes are
generated from their indices, so a 1M-scene dataset should cost what a 1k-scene one does
(target ratio <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
TARGET_RSS_RATIO = 1.1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--from-step", type=int, default=10, help="first step of the timed window")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch")
    parser.add_argument("--small-scenes", type=int, default=1_000)
    parser.add_argument("--large-scenes", type=int, default=1_000_000)
    parser.add_argument("--system", default="", help="train this system with its model preset (e.g. full; "
                        "default: the phase config's, tiny)")
    parser.add_argument("--preset", default="", help="model preset (default: the --system's, e.g. full-lite)")


def system_overrides(system: str, preset: str) -> list[str]:
    """Trainer overrides for ``--system``/``--preset``: the system with its own preset unless one is named."""
    out = [f"system={system}"] if system else []
    if preset or system:
        out.append(f"model.preset={preset or system}")
    return out


def _launch(processes: int, overrides: list[str], gpu: bool = False) -> list[dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="ris_scaling_"))
    if processes == 1 and not gpu:
        cmd = [sys.executable, "-m", "ris_dist.train"]
    else:
        backend = "ddp" if gpu else "cpu_ddp"
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
               f"configs/accelerate/{backend}.yaml", "--num_processes", str(processes), "-m", "ris_dist.train"]
    cmd += ["--config", "configs/phase0.yaml", f"output_dir={out}", "run_name=scaling", "mode=standard",
            "log.progress_bar=false", "gate.enforce=false", "checkpoint.every_steps=0", "data.val_scenes=64",
            *overrides]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    lines = (out / "scaling" / "phase0" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def _samples_per_s(records: list[dict[str, Any]], from_step: int, batch: int) -> float:
    by_step = {r["step"]: r for r in records}
    last = max(by_step)
    return (last - from_step) * batch / (by_step[last]["time"] - by_step[from_step]["time"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = system_overrides(args.system, args.preset)
    common = [f"max_steps={args.steps}", f"data.batch_size={args.batch_size}", "data.train_scenes=100000",
              "log.every_steps=1", *model]
    throughput = {}
    for procs in (1, 2):
        recs = _launch(procs, common)
        throughput[f"cpu_{procs}proc"] = _samples_per_s(recs, args.from_step, args.batch_size)
    for gpus in range(1, torch.cuda.device_count() + 1):
        recs = _launch(gpus, common, gpu=True)
        throughput[f"gpu_{gpus}"] = _samples_per_s(recs, args.from_step, args.batch_size)

    rss = {}
    for label, scenes in (("small", args.small_scenes), ("large", args.large_scenes)):
        recs = _launch(2, [f"max_steps={args.steps}", f"data.batch_size={args.batch_size}",
                           f"data.train_scenes={scenes}", "log.every_steps=5", *model])
        rss[label] = {"scenes": scenes, "rank0_peak_rss_mb": recs[-1]["peak_mem_mb"]}
    rss_ratio = rss["large"]["rank0_peak_rss_mb"] / rss["small"]["rank0_peak_rss_mb"]
    return {
        "bench": "scaling",
        "model_overrides": model,
        "samples_per_s": throughput,
        "speedup_2proc_over_1proc_cpu": throughput["cpu_2proc"] / throughput["cpu_1proc"],
        "cpu_cores": torch.get_num_threads(),
        "peak_rss_per_rank": rss,
        "rss_ratio_large_over_small": rss_ratio,
        "target_rss_ratio": TARGET_RSS_RATIO,
        "meets_rss_target": rss_ratio <= TARGET_RSS_RATIO,
        "note": "CPU processes share this machine's cores; on 2 cores, 2 processes mostly trade threads for ranks.",
    }
