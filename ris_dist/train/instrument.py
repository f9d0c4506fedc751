"""Per-step instrumentation: the [LR]/[GRAD]/[SKIP] lines, their TensorBoard twins, digests, images."""

from __future__ import annotations

import hashlib
import json
import logging
import resource
from pathlib import Path

import torch

from ..distributed.gate import GateDecision
from .monitor import Monitor

logger = logging.getLogger("ris_dist.train")


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def log_step(monitor: Monitor, step: int, d: GateDecision, losses: dict[str, float], delta: float,
             lrs: dict[str, float], scale: float | None, skipped: int, real_steps: int, samples_per_s: float) -> None:
    logger.info("[LR] step=%d %s", step, " ".join(f"{k}={v:.3e}" for k, v in lrs.items()))
    logger.info("[GRAD] step=%d norm=%.4g %s skipped=%d found_inf=%d%s loss=%.4g dparam=%.3g", step, d.grad_norm,
                "step" if d.step else f"skip({d.reason})", skipped, int(d.found_inf),
                "" if scale is None else f" scale={scale:g}", losses.get("total", 0.0), delta)
    monitor.scalars(step, {**{f"lr_{k}": v for k, v in lrs.items()}, "grad_norm": d.grad_norm,
                           "stepped": float(d.step), "skipped_total": skipped, "found_inf": float(d.found_inf),
                           "loss_scale": scale, "delta_param": delta, "samples_per_s": samples_per_s,
                           "peak_mem_mb": peak_memory_mb(), "real_steps": real_steps}, "train")
    weighted = {k: v for k, v in losses.items()
                if k.startswith(("w_", "lam_")) or k in ("total", "beta", "beta_localize")}
    monitor.scalars(step, weighted, "loss")
    monitor.scalars(step, {k: v for k, v in losses.items() if k not in weighted}, "loss_raw")


def log_skip(rank: int, step: int, reason: str, skipped: int, scale: float | None) -> None:
    """Every rank says it: a skip must be visible per rank, with the loss scale it leaves behind."""
    logging.getLogger("ris_dist.gate").warning("[SKIP] rank=%d step=%d reason=%s skipped=%d%s", rank, step, reason,
                                               skipped, "" if scale is None else f" scale={scale:g}")


def parameter_digest(params: list[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def record_indices(run_dir: Path, rank: int, step: int, epoch: int, micro: list[tuple[torch.Tensor, int]]) -> None:
    folder = run_dir / "indices"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"rank{rank}.jsonl", "a") as fh:
        for local, _ in micro:
            fh.write(json.dumps({"step": step, "epoch": epoch, "indices": local.tolist()}) + "\n")


def spectrum_images(monitor: Monitor, system, batch, R_eff, est, step: int) -> None:
    """MUSIC spectrum slices of fixed validation scenes with true and estimated sources marked."""
    from ..viz import music_spectrum_slices, scene_sources

    for i in range(len(batch)):
        image = music_spectrum_slices(R_eff[i], system, scene_sources(batch, i), scene_sources(est, i),
                                      true_powers=batch.powers[i][batch.valid[i]].cpu().numpy(),
                                      title=f"val scene {int(batch.indices[i])}, step {step}")
        monitor.image(f"music/scene{i}", image, step)
