"""Scene sampling: source count, positions (with minimum separation), powers, SNR, κ, H.

Each quantity draws from its own counter-based stream of the scene key, over K_max slots
whatever the scene's K, so a scene never depends on anything but (seed, split, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import SystemConfig
from . import rng
from .steering import direction_cosines, far_field_response, resolution_cells

# Stream ids are part of the data format: changing one changes every dataset.
STREAM_NUM_SOURCES = 0
STREAM_POSITIONS = 1
STREAM_POWERS = 2
STREAM_SNR = 3
STREAM_KAPPA = 4
STREAM_BS_ANGLES = 5
STREAM_H_NLOS = 6
STREAM_SYMBOLS = 7
STREAM_NOISE = 8
STREAM_CODE_SELECTION = 9

#: Candidates tried per source slot for the minimum separation (a fixed count keeps it a pure function).
SEPARATION_CANDIDATES = 64


@dataclass
class SceneParams:
    num_sources: torch.Tensor  # [B] int64
    valid: torch.Tensor  # [B, K_max] bool
    azimuth_deg: torch.Tensor  # [B, K_max]
    elevation_deg: torch.Tensor
    range_m: torch.Tensor
    powers: torch.Tensor  # [B, K_max] linear, 0 where invalid
    snr_db: torch.Tensor  # [B]
    kappa: torch.Tensor  # [B]


def _in_range(u: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * u


def normalized_coords(system: SystemConfig, azimuth_deg, elevation_deg, range_m) -> torch.Tensor:
    """(u, w, 1/r) divided by the resolution cells, ``[..., 3]``."""
    cu, cw, cr = resolution_cells(system)
    u, w = direction_cosines(azimuth_deg, elevation_deg)
    return torch.stack([u / cu, w / cw, (1.0 / range_m) / cr], dim=-1)


class DeferredSceneErrors:
    """Scenes that could not be sampled, kept as a device tensor and raised when read.

    Checking each batch on the host would cost a device sync per micro-batch; the trainer
    reads this on logging steps and at the end of a run instead.
    """

    def __init__(self, system: SystemConfig):
        self.system = system
        self._worst: torch.Tensor | None = None  # max of index·K_max + slot over failures, -1 if none

    def record(self, indices: torch.Tensor, unplaced_slot: torch.Tensor) -> None:
        kmax = self.system.max_sources
        code = torch.where(unplaced_slot >= 0, indices * kmax + unplaced_slot, -1).max() if indices.numel() \
            else torch.full((), -1, dtype=torch.int64, device=indices.device)
        self._worst = code if self._worst is None else torch.maximum(self._worst, code)

    def raise_if_any(self) -> None:
        """One host read; raises the one-line error of a recorded failure."""
        if self._worst is None:
            return
        code = int(self._worst)
        if code >= 0:
            index, slot = divmod(code, self.system.max_sources)
            raise RuntimeError(_separation_message(self.system, index, slot))


def _separation_message(system: SystemConfig, index: int, slot: int) -> str:
    return (f"scene {index}: no position for source {slot + 1} at min_separation_cells="
            f"{system.min_separation_cells} after {SEPARATION_CANDIDATES} candidates; lower it")


def sample_scene_params(system: SystemConfig, keys: torch.Tensor, indices: torch.Tensor,
                        errors: DeferredSceneErrors | None = None) -> SceneParams:
    """The parameters of each scene. A source slot with no candidate at the minimum
    separation raises (after the batch, naming the scene), or is recorded in ``errors``."""
    batch, kmax = keys.shape[0], system.max_sources
    u_k = rng.uniform(keys, STREAM_NUM_SOURCES, (1,))[:, 0]
    num_sources = torch.clamp((u_k * kmax).to(torch.int64) + 1, max=kmax)
    valid = torch.arange(kmax, device=keys.device)[None, :] < num_sources[:, None]

    cand = rng.uniform(keys, STREAM_POSITIONS, (kmax, SEPARATION_CANDIDATES, 3))
    az = _in_range(cand[..., 0], system.azimuth_range_deg)
    el = _in_range(cand[..., 1], system.elevation_range_deg)
    rr = _in_range(cand[..., 2], system.range_range_m)
    coords = normalized_coords(system, az, el, rr)  # [B, K, C, 3]

    chosen = torch.zeros(batch, kmax, dtype=torch.int64, device=keys.device)
    unplaced = torch.full((batch,), -1, dtype=torch.int64, device=keys.device)  # first slot with no position
    accepted = []
    for k in range(kmax):
        ok = torch.ones(batch, SEPARATION_CANDIDATES, dtype=torch.bool, device=keys.device)
        for prev in accepted:  # prev: [B, 3]
            dist = torch.linalg.vector_norm(coords[:, k] - prev[:, None, :], dim=-1)
            ok &= dist >= system.min_separation_cells
        first = torch.argmax(ok.to(torch.int8), dim=1)
        found = ok.gather(1, first[:, None])[:, 0]
        bad = ~found & valid[:, k]
        unplaced = torch.where(bad & (unplaced < 0), k, unplaced)
        chosen[:, k] = first
        accepted.append(coords[:, k].gather(1, first[:, None, None].expand(-1, 1, 3))[:, 0])

    if errors is not None:
        errors.record(indices, unplaced)
    elif bool((unplaced >= 0).any()):
        row = int((unplaced >= 0).nonzero()[0, 0])
        raise RuntimeError(_separation_message(system, int(indices[row]), int(unplaced[row])))
    pick = chosen[:, :, None]
    azimuth = az.gather(2, pick)[..., 0]
    elevation = el.gather(2, pick)[..., 0]
    range_m = rr.gather(2, pick)[..., 0]
    zero = torch.zeros_like(azimuth)
    azimuth, elevation, range_m = (torch.where(valid, t, zero) for t in (azimuth, elevation, range_m))

    power_db = _in_range(rng.uniform(keys, STREAM_POWERS, (kmax,)), system.source_power_range_db)
    powers = torch.where(valid, 10.0 ** (power_db / 10.0), zero)
    snr_db = _in_range(rng.uniform(keys, STREAM_SNR, (1,))[:, 0], system.snr_range_db)
    kappa = _in_range(rng.uniform(keys, STREAM_KAPPA, (1,))[:, 0], system.rician_factor_range)
    return SceneParams(num_sources, valid, azimuth, elevation, range_m, powers, snr_db, kappa)


def bs_ris_channel(system: SystemConfig, keys: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """Rician BS–RIS channel ``H [B, M, N]``: unit average power per entry."""
    ang = rng.uniform(keys, STREAM_BS_ANGLES, (3,))
    ris_az = _in_range(ang[:, 0], system.bs_azimuth_range_deg)
    ris_el = _in_range(ang[:, 1], system.bs_elevation_range_deg)
    departure = torch.deg2rad(_in_range(ang[:, 2], system.bs_departure_range_deg))
    m = torch.arange(system.num_bs_antennas, device=keys.device, dtype=torch.float32)
    bs_phase = math.pi * m[None, :] * torch.sin(departure)[:, None]  # half-wavelength ULA
    bs = torch.polar(torch.ones_like(bs_phase), bs_phase)  # [B, M]
    ris = far_field_response(system, ris_az, ris_el)  # [B, N]
    h_los = bs[:, :, None] * ris[:, None, :]
    h_nlos = rng.complex_normal(keys, STREAM_H_NLOS, (system.num_bs_antennas, system.num_elements))
    k = kappa[:, None, None]
    return torch.sqrt(k / (k + 1)) * h_los + torch.sqrt(1 / (k + 1)) * h_nlos
