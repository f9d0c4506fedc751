"""Learning-rate schedule: linear warmup from a non-zero floor, then cosine decay.

It is a plain function of the number of REAL optimizer steps; the trainer ticks the
scheduler only after a step the gate accepted (never through Accelerate's wrapper,
which ticks once per process).
"""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.warmup_floor + (1.0 - cfg.warmup_floor) * step / cfg.warmup_steps
    decay_steps = max(1, total_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / decay_steps)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def backbone_multiplier(step: int, cfg: OptimConfig) -> float:
    """Extra factor on the backbone group: frozen (0) or slowed for the first steps of a phase."""
    return cfg.backbone_lr_mult_initial if step < cfg.backbone_warm_steps else 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, cfg: OptimConfig):
    """One lambda per group, in build_optimizer's order: backbone, head."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [
        lambda s: lr_multiplier(s, total_steps, cfg) * backbone_multiplier(s, cfg),
        lambda s: lr_multiplier(s, total_steps, cfg),
    ])


def build_optimizer(model, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with two groups: backbone at lr, heads at lr x head_lr_mult."""
    groups = [
        {"params": list(model.backbone_parameters()), "lr": cfg.lr, "name": "backbone"},
        {"params": list(model.head_parameters()), "lr": cfg.lr * cfg.head_lr_mult, "name": "head"},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
