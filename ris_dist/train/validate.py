"""Validation: NMSE always; K and localization metrics (real MUSIC) when enabled.

Scenes are sharded across ranks by an Accelerate-prepared loader over global indices and
the per-scene results come back through ``gather_for_metrics``, which drops the padding of
the last batch: the metrics are the same on 1 or N ranks. MUSIC failures raise.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..config import SystemConfig
from ..losses import nmse
from ..physics import simulate
from ..covariance import effective_covariance


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
             localize_beta: float | None = None) -> dict[str, float]:
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
        if cfg.val.localize:
            R_music = R_eff if localize_beta == beta else effective_covariance(out.R_pred, batch.R_samp, localize_beta)
            fields.update(_localize_fields(system, cfg, R_music, batch, fields["k_head"]))
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
    if cfg.val.localize:
        metrics.update(_localization_metrics(system, cols))
    return metrics


def _localize_fields(system, cfg, R_eff, batch, k_head) -> dict[str, torch.Tensor]:
    from ..localize import localize

    if cfg.val.k_source == "head":
        k = k_head
    elif cfg.val.k_source == "oracle":
        k = batch.num_sources
    else:
        k = None
    est = localize(R_eff, system, num_sources=k)
    return {
        "est_az": est.azimuth_deg.float(), "est_el": est.elevation_deg.float(), "est_r": est.range_m.float(),
        "est_valid": est.valid, "est_k": est.num_sources,
        "true_az": batch.azimuth_deg, "true_el": batch.elevation_deg, "true_r": batch.range_m,
        "true_valid": batch.valid, "snr_db": batch.snr_db,
    }


def _localization_metrics(system, cols) -> dict[str, float]:
    from types import SimpleNamespace

    from ..localize.estimates import Estimates
    from ..metrics import score

    est = Estimates(cols["est_az"], cols["est_el"], cols["est_r"], cols["est_valid"], cols["est_k"])
    truth = SimpleNamespace(num_sources=cols["k_true"], valid=cols["true_valid"], azimuth_deg=cols["true_az"],
                            elevation_deg=cols["true_el"], range_m=cols["true_r"], snr_db=cols["snr_db"])
    return {k: float(v) for k, v in score(est, truth, system).items() if isinstance(v, (int, float))}
