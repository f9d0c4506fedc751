"""Step time through ris_dist's trainer (gate, instrumentation, Accelerate) vs a bare torch loop.

Same run, same model initialization, same batches, same AdamW parameter groups and LR
schedule. The trainer side runs :meth:`Trainer.step_once` (whose gate all-reduce also carries
the preemption flag), exactly what the training loop runs between validations; the bare side is
forward, loss, backward, ``optimizer.step()``, ``scheduler.step()``, ``zero_grad()``.
Blocks of steps alternate between the two (ABAB...) so machine drift hits both equally,
and the figure is the ratio of median per-step times. Target: <= 1.05.

``--backend deepspeed_zeroN`` instead compares backends: 2-process DeepSpeed against 2-process
DDP (``cpu_ddp``), each launched through ``accelerate launch`` running
:mod:`ris_dist.bench.train_step_worker` on the same config and global batches; the figure is
the ratio of median per-step times, DeepSpeed over DDP. Target: <= 1.10.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..config import load_system
from ..losses import compute_loss
from ..model import build_model, model_config
from ..physics import simulate
from .procs import run_all
from .scaling import system_overrides

TARGET_RATIO = 1.05
#: --backend: DeepSpeed's step time over DDP's on the same 2 processes.
TARGET_BACKEND_RATIO = 1.10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/phase0.yaml", help="phase config the trainer side uses")
    parser.add_argument("--steps-per-block", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side (alternating)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--system", default="", help="train this system with its model preset (e.g. full)")
    parser.add_argument("--preset", default="", help="model preset (default: the --system's, e.g. full-lite)")
    parser.add_argument("--backend", choices=["deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"],
                        help="instead: this 2-process DeepSpeed backend vs 2-process DDP (cpu_ddp), each through "
                             "accelerate launch, blocks*steps-per-block timed steps per side")
    parser.add_argument("--launch-timeout-s", type=float, default=900.0, help="--backend: per launch")
    parser.add_argument("overrides", nargs="*", help="train config overrides, dotted.key=value")


def _param_counts() -> dict[str, dict[str, int]]:
    out = {}
    for name in ("tiny", "full"):
        model = build_model(load_system(name), model_config(name))
        out[name] = model.count_parameters()
    return out


def bench_trainer(config: str, overrides: list[str], steps: int):
    """A trainer past its start (weights, self-test) in a scratch folder, and ``steps`` fixed global batches."""
    from ..train.config import load_train_config
    from ..train.trainer import Trainer

    tmp = tempfile.mkdtemp(prefix="ris_bench_")
    cfg = load_train_config(config, [f"output_dir={tmp}", "run_name=bench", "log.progress_bar=false",
                                     "checkpoint.resume=false", *overrides])
    trainer = Trainer(cfg)
    trainer.begin()
    G = cfg.data.batch_size
    return trainer, [torch.arange(i * G, (i + 1) * G) % cfg.data.train_scenes for i in range(steps)]


def scenes_sha256(batches: list[torch.Tensor]) -> str:
    return hashlib.sha256(torch.cat(batches).numpy().tobytes()).hexdigest()[:16]


def compare_backends(args: argparse.Namespace) -> dict[str, Any]:
    """``args.backend`` vs ``cpu_ddp``, 2 processes each, same config, model seed and global batches."""
    steps = args.blocks * args.steps_per_block
    sides: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ris_bench_backends_") as tmp:
        for backend in ("cpu_ddp", args.backend):
            out = Path(tmp) / f"{backend}.json"
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                   f"configs/accelerate/{backend}.yaml", "--num_processes", "2", "-m",
                   "ris_dist.bench.train_step_worker", "--out", str(out), "--config", args.config,
                   "--steps", str(steps), "--warmup", str(args.warmup),
                   *system_overrides(args.system, args.preset), *args.overrides]
            proc = run_all([(cmd, Path(tmp) / f"{backend}.log")], args.launch_timeout_s, 1)[0]
            if proc.returncode != 0 or not out.is_file():
                raise RuntimeError(f"{backend}: worker exited {proc.returncode}: {proc.error_line()}")
            sides[backend] = json.loads(out.read_text())
    med = {b: statistics.median(s["step_s"]) for b, s in sides.items()}
    ratio = med[args.backend] / med["cpu_ddp"]
    return {
        "bench": "train-step", "compare": f"{args.backend} / cpu_ddp", "world_size": 2,
        "global_batch": sides["cpu_ddp"]["global_batch"],
        "steps_timed_per_side": {b: s["steps_timed"] for b, s in sides.items()},
        "scenes_sha256": {b: s["scenes_sha256"] for b, s in sides.items()},
        "gate_skips": {b: s["gate_skips"] for b, s in sides.items()},
        "median_step_s": med,
        "ratio_deepspeed_over_ddp": ratio,
        "target_ratio": TARGET_BACKEND_RATIO,
        "meets_target": ratio <= TARGET_BACKEND_RATIO,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.backend:
        return compare_backends(args)
    trainer, batches = bench_trainer(args.config, [*system_overrides(args.system, args.preset), *args.overrides],
                                     args.warmup + args.blocks * args.steps_per_block)
    cfg = trainer.cfg
    system, device = trainer.system, trainer.accelerator.device
    G = cfg.data.batch_size

    torch.manual_seed(cfg.seed)
    bare_model = build_model(system, cfg.model).to(device)
    from ..train.schedule import build_optimizer, build_scheduler

    bare_opt = build_optimizer(bare_model, cfg.optim)
    bare_sched = build_scheduler(bare_opt, trainer.total_steps, cfg.optim)
    weights, beta = cfg.loss.weights, cfg.beta.value(0)

    seen: dict[str, list[torch.Tensor]] = {"trainer": [], "bare": []}

    def bare_step(indices: torch.Tensor) -> None:
        batch = simulate(system, indices, cfg.data.seed, cfg.data.train_split, device=device)
        out = bare_model(batch.y, batch.H, batch.codes, batch.snr_db)
        loss = compute_loss(out, batch, system, beta, cfg.loss, weights).total
        loss.backward()
        bare_opt.step()
        bare_sched.step()
        bare_opt.zero_grad(set_to_none=True)

    def trainer_step(indices: torch.Tensor) -> None:
        trainer.step_once([(indices, int(indices.numel()))])

    for i in range(args.warmup):
        bare_step(batches[i])
        trainer_step(batches[i])
    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    i = args.warmup
    for _ in range(args.blocks):
        for name, fn in (("bare", bare_step), ("trainer", trainer_step)):
            for j in range(args.steps_per_block):
                t = time.perf_counter()
                fn(batches[i + j])
                times[name].append(time.perf_counter() - t)
                seen[name].append(batches[i + j])
        i += args.steps_per_block
    trainer.monitor.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["trainer"] / med["bare"]
    return {
        "bench": "train-step",
        "system": cfg.system,
        "global_batch": G,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "steps_timed_per_side": {k: len(v) for k, v in times.items()},
        "scenes_sha256": {k: scenes_sha256(v) for k, v in seen.items()},
        "median_step_s": med,
        "samples_per_s": {k: G / v for k, v in med.items()},
        "ratio_trainer_over_bare": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "gate_skips_during_bench": sum(trainer.state.skipped.values()),
        "param_counts": _param_counts(),
    }
