"""Validation: NMSE always; K and localization metrics (real MUSIC) when enabled.

Scenes are sharded across ranks by an Accelerate-prepared loader over global indices and
the per-scene results come back through ``gather_for_metrics``, which drops the padding of
the last batch: the metrics are the same on 1 or N ranks. MUSIC failures raise.

With ``val.k_decision: success`` every scene is localized once per candidate K̂ = 1..K_max;
those runs calibrate the :class:`~ris_dist.localize.SuccessTable` (on all ranks' scenes),
which then picks each scene's K̂ and so the estimates the metrics score. ``success_map``
reports what the head's argmax would have scored on the same runs, and ``*_oracle_k`` what MUSIC
scores with each scene's true K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import SystemConfig
from ..covariance import effective_covariance
from ..localize import SuccessTable
from ..losses import nmse
from ..physics import simulate
from .phase_gate import RMSES


@dataclass
class Validation:
    """One validation's metrics (identical on every rank) and, with ``val.k_decision: success``,
    the K̂ table calibrated on it (what ``best/meta.json`` then serves)."""

    metrics: dict[str, float]
    success_table: SuccessTable | None = None


class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, count: int):
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> int:
        return i


def make_val_loader(accelerator, num_scenes: int, batch_size: int) -> DataLoader:
    loader = DataLoader(_IndexDataset(num_scenes), batch_size=batch_size, shuffle=False,
                        collate_fn=lambda items: torch.tensor(items, dtype=torch.int64))
    return accelerator.prepare_data_loader(loader, device_placement=False)


@torch.no_grad()
def validate(accelerator, model, backend, system: SystemConfig, cfg, loader, beta: float,
             localize_beta: float | None = None) -> Validation:
    """Metrics over the whole validation set, identical on every rank.

    ``beta`` mixes the R_eff whose NMSE is reported (the loss's); MUSIC searches the R_eff mixed
    with ``localize_beta`` (None = ``beta``).
    """
    localize_beta = beta if localize_beta is None else localize_beta
    model.eval()
    device = accelerator.device
    gathered: dict[str, list[torch.Tensor]] = {}
    for indices in loader:
        batch = simulate(system, indices, cfg.data.seed, cfg.data.val_split, device=device)
        with backend.autocast():
            out = model(batch.y, batch.H, batch.codes, batch.snr_db)
        R_eff = effective_covariance(out.R_pred, batch.R_samp, beta)
        fields = {
            "nmse": nmse(R_eff, batch.R_true).float(),
            "nmse_pred": nmse(out.R_pred, batch.R_true).float(),
            "nmse_samp": nmse(batch.R_samp, batch.R_true).float(),
            "k_true": batch.num_sources,
            "k_head": out.k_logits.float().argmax(-1) + 1,
        }
        if cfg.debug.fail_validation_on_rank == accelerator.process_index:
            raise RuntimeError(f"MUSIC failed on rank {accelerator.process_index} (injected by "
                               "debug.fail_validation_on_rank)")
        if cfg.val.localize:
            R_music = R_eff if localize_beta == beta else effective_covariance(out.R_pred, batch.R_samp, localize_beta)
            fields.update(_localize_fields(system, cfg, R_music, batch, fields["k_head"], out.k_logits))
        for key, value in fields.items():
            gathered.setdefault(key, []).append(accelerator.gather_for_metrics(value.contiguous()).cpu())
    model.train()
    cols = {k: torch.cat(v) for k, v in gathered.items()}
    metrics = {
        "nmse": float(cols["nmse"].mean()),
        "nmse_pred": float(cols["nmse_pred"].mean()),
        "nmse_samp": float(cols["nmse_samp"].mean()),
        "k_head_acc": float((cols["k_head"] == cols["k_true"]).float().mean()),
        "num_scenes": int(cols["nmse"].numel()),
    }
    table, k_chosen = None, None
    if cfg.val.localize and cfg.val.k_decision == "success":
        table = _calibrate(system, cols)
        k_chosen = table.choose(cols["k_probs"], cols["snr_db"])
        metrics["success_map"] = _localization_metrics(system, cols, cols["k_head"])["success"]
        oracle_k = _localization_metrics(system, cols, cols["k_true"])
        metrics.update({f"{name}_oracle_k": oracle_k[name] for name in ("success", *RMSES)})
    if cfg.val.localize:
        metrics.update(_localization_metrics(system, cols, k_chosen))
    return Validation(metrics, table)


def _localize_fields(system, cfg, R_eff, batch, k_head, k_logits) -> dict[str, torch.Tensor]:
    from ..localize import localize

    truth = {"true_az": batch.azimuth_deg, "true_el": batch.elevation_deg, "true_r": batch.range_m,
             "true_valid": batch.valid, "snr_db": batch.snr_db}
    if cfg.val.k_decision == "success":
        # One MUSIC run per candidate K̂, stacked on dim 1: est_*[:, k-1] searched for k sources.
        runs = [_estimate_fields(localize(R_eff, system, num_sources=torch.full_like(k_head, k)))
                for k in range(1, system.max_sources + 1)]
        return {**{key: torch.stack([run[key] for run in runs], 1) for key in runs[0]},
                "k_probs": torch.softmax(k_logits.float(), -1), **truth}
    if cfg.val.k_source == "head":
        k = k_head
    elif cfg.val.k_source == "oracle":
        k = batch.num_sources
    else:
        k = None
    return {**_estimate_fields(localize(R_eff, system, num_sources=k)), **truth}


def _estimate_fields(est) -> dict[str, torch.Tensor]:
    return {"est_az": est.azimuth_deg.float(), "est_el": est.elevation_deg.float(), "est_r": est.range_m.float(),
            "est_valid": est.valid}


def _truth(cols):
    from types import SimpleNamespace

    return SimpleNamespace(num_sources=cols["k_true"], valid=cols["true_valid"], azimuth_deg=cols["true_az"],
                           elevation_deg=cols["true_el"], range_m=cols["true_r"], snr_db=cols["snr_db"])


def _estimates(cols, k: torch.Tensor | None = None):
    """The gathered estimates; with per-candidate runs (dim 1), each scene's run for its ``k``."""
    from ..localize.estimates import Estimates

    keys = ("est_az", "est_el", "est_r", "est_valid")
    if k is None:
        az, el, r, valid = (cols[key] for key in keys)
    else:
        rows = torch.arange(k.numel())
        az, el, r, valid = (cols[key][rows, k - 1] for key in keys)
    return Estimates(az, el, r, valid, valid.sum(-1))


def _calibrate(system, cols) -> SuccessTable:
    """Fit q_k on this validation's per-candidate runs (all ranks' scenes)."""
    from ..localize import fit_success_table
    from ..metrics import default_edges, per_scene

    truth = _truth(cols)
    success_by_k = np.stack([per_scene(_estimates(cols, torch.full_like(cols["k_true"], k)), truth, system).success
                             for k in range(1, system.max_sources + 1)], 1)
    return fit_success_table(success_by_k, cols["k_true"].numpy(), cols["snr_db"].numpy(),
                             default_edges("snr_db", system))


def _localization_metrics(system, cols, k: torch.Tensor | None = None) -> dict[str, float]:
    """The metrics of the gathered estimates; with per-candidate runs, of each scene's run for ``k``."""
    from ..metrics import score

    score_ = score(_estimates(cols, k), _truth(cols), system)
    return {name: float(v) for name, v in score_.items() if isinstance(v, (int, float))}
