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

    @classmethod
    def from_positions(cls, positions: torch.Tensor, valid: torch.Tensor, num_sources: torch.Tensor | None = None,
                       steering_model: str = "exact") -> "Estimates":
        """Estimates from ``positions [B, K_slots, 3]`` (φ deg, θ deg, r m, any float dtype) and ``valid``.

        Invalid slots are zeroed; ``num_sources`` defaults to the count of valid slots.
        """
        zero = torch.zeros((), dtype=torch.float32, device=positions.device)
        az, el, rng = (torch.where(valid, t.to(torch.float32), zero) for t in positions.unbind(-1))
        count = valid.sum(-1).to(torch.int64) if num_sources is None else num_sources
        return cls(azimuth_deg=az, elevation_deg=el, range_m=rng, valid=valid, num_sources=count,
                   steering_model=steering_model)

    def __len__(self) -> int:
        return int(self.num_sources.shape[0])

    def to(self, device) -> "Estimates":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self) if f.name != "steering_model"})

    def select(self, rows) -> "Estimates":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows]
                                            for f in dataclasses.fields(self) if f.name != "steering_model"})
