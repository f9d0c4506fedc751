"""Single-process stages of the GPU acceptance run, each in its own process so a hang is killed.

``python -m ris_dist.bench.gpu_stages throughput|validation --out FILE.json ...``. Timers
synchronize the device before they read the clock, so on CUDA each figure is the device
time of its part, not the time to enqueue it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch


def _sync(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _config(system: str, preset: str, overrides: list[str]):
    from ..train.config import load_train_config

    return load_train_config("configs/phase1.yaml", [f"system={system}", f"model.preset={preset}", *overrides])


def throughput(system_name: str, preset: str, batches: list[int], dtypes: list[str], seconds: float,
               max_steps: int) -> dict[str, Any]:
    """Per global batch and precision: scenes/s, the step split into its parts, and peak memory."""
    from ..config import load_system
    from ..distributed.gate import step_gate, total_grad_norm
    from ..losses import compute_loss
    from ..model import build_model
    from ..physics import simulate
    from ..train.schedule import build_optimizer

    cfg = _config(system_name, preset, [])
    system = load_system(system_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(system, cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    budget = seconds / max(1, len(batches) * len(dtypes))
    rows = []
    for dtype in dtypes:
        autocast = torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype],
                                  enabled=True) if dtype != "none" else torch.autocast(device.type, enabled=False)
        for batch_size in batches:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            parts: dict[str, list[float]] = {"simulate_s": [], "forward_backward_s": [], "gate_step_s": []}
            start, step = time.perf_counter(), 0
            row: dict[str, Any] = {"batch": batch_size, "amp": dtype}
            try:
                # Two warm-up steps (allocator, kernels), then timed steps within this config's share.
                while step < max_steps + 2 and (step < 3 or time.perf_counter() - start < budget):
                    indices = torch.arange(step * batch_size, (step + 1) * batch_size)
                    t0 = _sync(device)
                    batch = simulate(system, indices, cfg.data.seed, cfg.data.train_split, device=device)
                    t1 = _sync(device)
                    with autocast:
                        out = model(batch.y, batch.H, batch.codes, batch.snr_db)
                    compute_loss(out, batch, system, 0.0, cfg.loss, cfg.loss.weights).total.backward()
                    t2 = _sync(device)
                    if step_gate(total_grad_norm(model.parameters(), device), False, device).step:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    t3 = _sync(device)
                    if step >= 2:
                        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                            parts[key].append(value)
                    step += 1
            except torch.cuda.OutOfMemoryError as err:
                row["error"] = f"out of memory: {' '.join(str(err).split())[:160]}"
            if parts["simulate_s"]:
                med = {k: statistics.median(v) for k, v in parts.items()}
                step_s = sum(med.values())
                row.update({"steps_timed": len(parts["simulate_s"]), **med, "step_s": step_s,
                            "scenes_per_s": batch_size / step_s})
            if device.type == "cuda":
                row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            rows.append(row)
            print(f"[THROUGHPUT] {system_name} B={batch_size} amp={dtype} "
                  + (f"{row['scenes_per_s']:.0f} scenes/s" if "scenes_per_s" in row else row.get("error", "no steps"))
                  + (f" peak={row['peak_mem_mb']:.0f}MiB" if "peak_mem_mb" in row else ""), file=sys.stderr)
    return {"system": system_name, "preset": preset, "device": str(device),
            "parameters": model.count_parameters()["total"], "rows": rows}


def validation(system_name: str, preset: str, scenes: int, batch_size: int) -> dict[str, Any]:
    """The trainer's validation (MUSIC on, K̂ from the K head) of ``scenes`` scenes, timed.

    The model is freshly initialized: the figure is the cost, not the accuracy.
    """
    from ..config import load_system
    from ..distributed.backend import TorchBackend, make_accelerator
    from ..model import build_model
    from ..train.validate import make_val_loader, validate

    cfg = _config(system_name, preset, ["val.localize=true", "val.k_source=head", "val.k_decision=map",
                                        f"data.val_scenes={scenes}", f"data.val_batch_size={batch_size}"])
    system = load_system(system_name)
    acc = make_accelerator()
    torch.manual_seed(0)
    model = build_model(system, cfg.model).to(acc.device)
    backend = TorchBackend(acc, model, None, "none", 1.0)
    loader = make_val_loader(acc, scenes, batch_size)
    t0 = _sync(acc.device)
    result = validate(acc, model, backend, system, cfg, loader, cfg.beta.value(0), cfg.beta.localize_value(0))
    seconds = _sync(acc.device) - t0
    print(f"[VALTIME] {system_name} {scenes} scenes in {seconds:.1f} s", file=sys.stderr)
    return {"system": system_name, "preset": preset, "device": str(acc.device), "scenes": scenes,
            "batch": batch_size, "k_max": system.max_sources, "k_source": "head", "seconds": seconds,
            "scenes_per_s": scenes / seconds, "metrics_untrained_model": result.metrics}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ris_dist.bench.gpu_stages")
    p.add_argument("stage", choices=["throughput", "validation"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--system", default="full")
    p.add_argument("--preset", default="full")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--dtypes", nargs="+", default=["none"], choices=["none", "bf16", "fp16"])
    p.add_argument("--seconds", type=float, default=60.0, help="throughput: time for all configs together")
    p.add_argument("--max-steps", type=int, default=20, help="throughput: timed steps per config at most")
    p.add_argument("--scenes", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256, help="validation batch")
    args = p.parse_args(argv)
    if args.stage == "throughput":
        result = throughput(args.system, args.preset, args.batches, args.dtypes, args.seconds, args.max_steps)
    else:
        result = validation(args.system, args.preset, args.scenes, args.batch)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
