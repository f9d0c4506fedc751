"""Can the network fit a fixed set of scenes, and is the limit its features or the rest of it?

Two copies of the same model (same preset, same initial weights, same scenes, same batch
order) are trained for the same number of steps on pure NMSE(R_pred, R_true):

* ``features``: the network as shipped, on its real features (R_samp, Q, N_z, x̂);
* ``oracle``:   the same network with R_samp's rows replaced by R_true's rows (trace N), so
  the answer is in its input and only the token mixing, the factor head and the optimizer
  stand between it and NMSE 0.

If ``oracle`` fits and ``features`` does not, head rank, loss and optimizer are not the
bottleneck: extracting the steering structure from the measurements is. The result gives
the final NMSE on the training scenes per true K for both and their ratio (same run).
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

from ..config import load_system, parse_overrides
from ..losses import nmse
from ..model import build_model, model_config
from ..physics import simulate

log = logging.getLogger(__name__)

VARIANTS = ("features", "oracle")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Command-line options of this benchmark."""
    parser.add_argument("--system", default="full", help="system config name or YAML path (default: full)")
    parser.add_argument("--preset", default="full-lite", help="model preset (default: full-lite)")
    parser.add_argument("--num-scenes", type=int, default=512, help="training scenes, fitted repeatedly")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per variant")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, no schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--variants", type=_variants, default=list(VARIANTS),
                        help=f"comma-separated subset of {', '.join(VARIANTS)} (default: both)")
    parser.add_argument("overrides", nargs="*", help="model field overrides, key=value (e.g. candidates=8)")


def _variants(text: str) -> list[str]:
    """``--variants``: a non-empty comma-separated subset of :data:`VARIANTS` (argparse exits 2 otherwise)."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(VARIANTS)}")
    return variants


def _fit(variant: str, system, preset: str, scenes, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model = build_model(system, model_config(preset, **parse_overrides(args.overrides)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    order = torch.randint(0, len(scenes), (args.steps, args.batch_size),
                          generator=torch.Generator().manual_seed(args.seed))

    def predict(batch) -> torch.Tensor:
        f = model.features(batch.y, batch.H, batch.codes, batch.snr_db)
        if variant == "oracle":
            f = {**f, "R_samp": batch.R_true.to(f["R_samp"].dtype)}
        return model.forward_features(f, batch.snr_db).R_pred

    t0 = time.perf_counter()
    for step, rows in enumerate(order, start=1):
        batch = scenes.select(rows)
        loss = nmse(predict(batch), batch.R_true).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            log.info("%s step %d/%d nmse %.3f", variant, step, args.steps, loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        per_scene = torch.cat([nmse(predict(scenes.select(torch.arange(i, min(i + 128, len(scenes))))),
                                    scenes.R_true[i:i + 128])
                               for i in range(0, len(scenes), 128)])
    per_k = {int(k): float(per_scene[scenes.num_sources == k].mean()) for k in scenes.num_sources.unique()}
    return {"nmse": float(per_scene.mean()), "nmse_per_k": per_k, "train_seconds": seconds}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fit both variants; return their NMSE on the training scenes and the ratio."""
    variants = args.variants
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    system = load_system(args.system)
    scenes = simulate(system, torch.arange(args.num_scenes), seed=args.seed, split="train")
    r_samp = float(nmse(scenes.R_samp, scenes.R_true).mean())
    results = {v: _fit(v, system, args.preset, scenes, args) for v in variants}
    ratio = (results["features"]["nmse"] / results["oracle"]["nmse"]) if len(results) == 2 else None
    return {
        "system": args.system, "preset": args.preset, "num_scenes": args.num_scenes, "steps": args.steps,
        "batch_size": args.batch_size, "lr": args.lr, "threads": torch.get_num_threads(),
        "model_overrides": list(args.overrides),
        "nmse_r_samp": r_samp, **results,
        "features_over_oracle": ratio,
    }
