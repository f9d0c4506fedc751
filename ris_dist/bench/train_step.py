"""Step time through ris_dist's trainer (gate, instrumentation, Accelerate) vs a bare torch loop.

Same run, same model initialization, same batches, same AdamW parameter groups and LR
schedule. The trainer side runs :meth:`Trainer.step_once` plus the per-step preemption
all-reduce, exactly what the training loop runs between validations; the bare side is
forward, loss, backward, ``optimizer.step()``, ``scheduler.step()``, ``zero_grad()``.
Blocks of steps alternate between the two (ABAB...) so machine drift hits both equally,
and the figure is the ratio of median per-step times. Target: <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from ..config import load_system
from ..losses import compute_loss
from ..model import build_model, model_config
from ..physics import simulate
from .scaling import system_overrides

TARGET_RATIO = 1.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/phase0.yaml", help="phase config the trainer side uses")
    parser.add_argument("--steps-per-block", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=6, help="blocks per side (alternating)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--system", default="", help="train this system with its model preset (e.g. full)")
    parser.add_argument("--preset", default="", help="model preset (default: the --system's, e.g. full-lite)")
    parser.add_argument("overrides", nargs="*", help="train config overrides, dotted.key=value")


def _param_counts() -> dict[str, dict[str, int]]:
    out = {}
    for name in ("tiny", "full"):
        model = build_model(load_system(name), model_config(name))
        out[name] = model.count_parameters()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..train.config import load_train_config
    from ..train.trainer import Trainer

    tmp = tempfile.mkdtemp(prefix="ris_bench_")
    cfg = load_train_config(args.config, [f"output_dir={tmp}", "run_name=bench", "log.progress_bar=false",
                                          "checkpoint.resume=false",
                                          *system_overrides(args.system, args.preset), *args.overrides])
    trainer = Trainer(cfg)
    trainer.begin()
    system, device = trainer.system, trainer.accelerator.device
    G = cfg.data.batch_size
    total = args.warmup + args.blocks * args.steps_per_block
    batches = [torch.arange(i * G, (i + 1) * G) % cfg.data.train_scenes for i in range(total)]

    torch.manual_seed(cfg.seed)
    bare_model = build_model(system, cfg.model).to(device)
    from ..train.schedule import build_optimizer, build_scheduler

    bare_opt = build_optimizer(bare_model, cfg.optim)
    bare_sched = build_scheduler(bare_opt, trainer.total_steps, cfg.optim)
    weights, beta = cfg.loss.weights, cfg.beta.value(0)

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
        trainer.preempt.synced_signal()

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
        "steps_timed_per_side": len(times["trainer"]),
        "median_step_s": med,
        "samples_per_s": {k: G / v for k, v in med.items()},
        "ratio_trainer_over_bare": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        "gate_skips_during_bench": sum(trainer.state.skipped.values()),
        "param_counts": _param_counts(),
    }
