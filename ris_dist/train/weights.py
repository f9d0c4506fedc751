"""Loss weights over a run: the static weights (explicit, or calibrated once) times the ramps.

``auto_weights`` resolves λ_t = f_t·base / ((1 − Σf)·raw_t) on a fixed calibration batch, where
``base`` is the loss of the explicitly weighted terms: each calibrated term then starts at
fraction f_t of the total. Every rank computes the same numbers (same batch, same model), and
the trainer stores the result in its checkpoint, so a resumed run never recalibrates.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..losses import TERM_WEIGHTS, LossWeights, compute_loss
from ..physics import simulate
from .config import RampConfig, TrainConfig

_RAW_KEY = {weight: raw for raw, weight in TERM_WEIGHTS.items()}


def calibrate(cfg: TrainConfig, model, backend, system, device) -> dict[str, float]:
    weights = dataclasses.asdict(cfg.loss.weights)
    if not cfg.auto_weights:
        return weights
    batch = simulate(system, torch.arange(min(cfg.data.val_scenes, 128)), cfg.data.seed, cfg.data.val_split,
                     device=device)
    probe = LossWeights(**{**weights, **{k: 1.0 for k in cfg.auto_weights}})
    with torch.no_grad(), backend.autocast():
        out = model(batch.y, batch.H, batch.codes, batch.snr_db)
    result = compute_loss(out, batch, system, cfg.beta.value(1), cfg.loss, probe)
    base = sum(float(v) for k, v in result.weighted.items() if TERM_WEIGHTS[k] not in cfg.auto_weights)
    scale = 1.0 / (1.0 - sum(cfg.auto_weights.values()))
    for name, frac in cfg.auto_weights.items():
        raw = float(result.raw[_RAW_KEY[name]])
        if not (math.isfinite(raw) and raw > 0):
            raise RuntimeError(f"auto_weights.{name}: the term is {raw} on the calibration batch; "
                               "set its weight explicitly")
        weights[name] = frac * base * scale / raw
    return weights


def weights_at(base: dict[str, float], ramps: dict[str, RampConfig], step: int) -> LossWeights:
    """The weights of optimizer step ``step``: each static λ times its ramp factor."""
    return LossWeights(**{name: value * (ramps[name].factor(step) if name in ramps else 1.0)
                          for name, value in base.items()})
