"""Per-scene source estimates, the currency between localize, metrics, evaluate and inference."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Estimates:
    """Estimated sources, padded to ``K_slots`` per scene; ``valid`` marks real estimates.

    Fields are ``[B, K_slots]`` (``num_sources`` is ``[B]``); padded slots hold 0.
    ``steering_model`` records the model the estimator used ("exact" or "fresnel").
    """

    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    range_m: torch.Tensor
    valid: torch.Tensor
    num_sources: torch.Tensor
    steering_model: str = "exact"

    def __len__(self) -> int:
        return int(self.num_sources.shape[0])

    def to(self, device) -> "Estimates":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "steering_model"})

    def select(self, rows) -> "Estimates":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows]
                                            for f in dataclasses.fields(self) if f.name != "steering_model"})
