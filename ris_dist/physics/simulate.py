"""Measurements and covariances (system_model.md, "Measurements" and "Covariances").

``y_l = H·diag(c_l)·A·s_l + n_l`` with i.i.d. symbols per snapshot, σ² set from the drawn
per-scene SNR. R_true and R_samp are derived from stored fields by the functions below,
so a scene on disk holds no N×N matrix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..config import SystemConfig
from . import codebook as cb
from . import rng
from .scenes import (STREAM_CODE_SELECTION, STREAM_NOISE, STREAM_SYMBOLS, DeferredSceneErrors, bs_ris_channel,
                     sample_scene_params)
from .steering import steering


@dataclass
class SceneBatch:
    """A batch of scenes. Positions are padded to K_max; ``valid`` marks real sources."""

    indices: torch.Tensor  # [B] int64 global scene indices
    y: torch.Tensor  # [B, L, M] complex64
    H: torch.Tensor  # [B, M, N] complex64
    codes: torch.Tensor  # [B, L, N] complex64
    snr_db: torch.Tensor  # [B]
    noise_var: torch.Tensor  # [B]
    kappa: torch.Tensor  # [B]
    num_sources: torch.Tensor  # [B] int64
    valid: torch.Tensor  # [B, K_max] bool
    azimuth_deg: torch.Tensor  # [B, K_max]
    elevation_deg: torch.Tensor  # [B, K_max]
    range_m: torch.Tensor  # [B, K_max]
    powers: torch.Tensor  # [B, K_max] linear, 0 where invalid
    R_true: torch.Tensor  # [B, N, N] complex64, tr = N
    R_samp: torch.Tensor  # [B, N, N] complex64, tr = N

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to(self, device, non_blocking: bool = False) -> "SceneBatch":
        return SceneBatch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
                             for f in dataclasses.fields(self)})

    def select(self, rows) -> "SceneBatch":
        return SceneBatch(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    @staticmethod
    def cat(batches: list["SceneBatch"]) -> "SceneBatch":
        return SceneBatch(**{f.name: torch.cat([getattr(b, f.name) for b in batches])
                             for f in dataclasses.fields(SceneBatch)})


def trace_normalize(R: torch.Tensor, target: float) -> torch.Tensor:
    """Scale each ``[..., N, N]`` matrix to trace ``target``."""
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)
    return R * (target / tr)[..., None, None]


def padded_steering(system: SystemConfig, azimuth_deg, elevation_deg, range_m, powers) -> torch.Tensor:
    """Steering of every slot ``[B, K_max, N]``; padded slots (power 0) are steered at 1 m.

    Padded slots hold range 0, where the path difference of an element at the origin (odd
    N_H and N_V) is 0/0; a NaN there would survive multiplication by the zero power.
    """
    safe_range = torch.where(powers > 0, range_m, torch.ones_like(range_m))
    return steering(system, azimuth_deg, elevation_deg, safe_range)


def true_covariance(system: SystemConfig, azimuth_deg, elevation_deg, range_m, powers) -> torch.Tensor:
    """R_true = A·diag(p)·A^H, trace-normalized to N. Invalid slots must have power 0."""
    A = padded_steering(system, azimuth_deg, elevation_deg, range_m, powers)  # [B, K, N]
    R = torch.einsum("bkn,bk,bkm->bnm", A, powers.to(A.dtype), A.conj())
    return trace_normalize(R, float(system.num_elements))


def back_projection(system: SystemConfig, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Per-snapshot regularized minimum-norm back-projection x̂_l ``[B, L, N]``.

    ``x̂_l = G_l^H (G_l G_l^H + δI)^{-1} y_l`` with ``G_l = H·diag(c_l)`` and
    ``δ = samp_delta_rel · tr(G_l G_l^H)/M``.
    """
    M = H.shape[-2]
    gram = torch.einsum("bmn,bln,bkn->blmk", H, (codes.abs() ** 2).to(H.dtype), H.conj())  # [B, L, M, M]
    delta = system.samp_delta_rel * torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(-1) / M
    eye = torch.eye(M, dtype=H.dtype, device=H.device)
    z = torch.linalg.solve(gram + delta[..., None, None] * eye, y.unsqueeze(-1)).squeeze(-1)  # [B, L, M]
    return codes.conj() * (z @ H.conj())  # (G_l^H z_l)_n = conj(c_ln) Σ_m conj(H_mn) z_m


def sample_covariance(system: SystemConfig, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """R_samp = (1/L) Σ_l x̂_l x̂_l^H, trace-normalized to N. No mean-centring: the signal is zero-mean."""
    x = back_projection(system, y, H, codes)
    R = x.transpose(-1, -2) @ x.conj() / x.shape[-2]
    R = 0.5 * (R + R.mH)
    return trace_normalize(R, float(system.num_elements))


def _as_indices(indices, device) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.int64)
    if idx.ndim != 1:
        raise ValueError(f"scene indices must be 1-D, got shape {tuple(idx.shape)}")
    rng.check_indices(idx)  # on the host copy: no device sync per batch
    return idx.to(device)


def code_indices(system: SystemConfig, keys: torch.Tensor) -> torch.Tensor:
    """Which codewords each scene applies, ``[B, L]`` int64 (what a data shard stores)."""
    if system.codebook.per_scene_selection:
        u = rng.uniform(keys, STREAM_CODE_SELECTION, (system.codebook_size,))
        return torch.argsort(u, dim=1, stable=True)[:, : system.num_snapshots]  # ties by index
    return cb.fixed_selection(system).to(keys.device).unsqueeze(0).expand(keys.shape[0], -1)


def codes_from_indices(system: SystemConfig, indices: torch.Tensor) -> torch.Tensor:
    """Codewords ``[B, L, N]`` for code indices ``[B, L]``."""
    return cb.codewords(system, device=indices.device)[indices]


def simulate(system: SystemConfig, indices, seed: int, split: str, device=None,
             errors: DeferredSceneErrors | None = None) -> SceneBatch:
    """Generate the scenes with global ``indices`` of (``seed``, ``split``) on ``device``.

    Each scene is a pure function of (seed, split, index): the same on any batch
    composition, device or worker count, within float32 tolerance. A scene that cannot
    be sampled raises here, or, with ``errors``, is recorded there (on the device) and
    raised when the caller reads it, so a training step needs no host sync for it.
    """
    idx = _as_indices(indices, device)
    keys = rng.scene_keys(seed, split, idx, check=False)
    p = sample_scene_params(system, keys, idx, errors)
    H = bs_ris_channel(system, keys, p.kappa)
    codes = codes_from_indices(system, code_indices(system, keys))

    A = padded_steering(system, p.azimuth_deg, p.elevation_deg, p.range_m, p.powers)  # [B, K, N]
    L, kmax = system.num_snapshots, system.max_sources
    symbols = rng.complex_normal(keys, STREAM_SYMBOLS, (kmax, L)) * torch.sqrt(p.powers)[..., None]  # [B, K, L]
    field_at_ris = torch.einsum("bkn,bkl->bln", A, symbols)  # (A s_l)_n  [B, L, N]
    signal = (codes * field_at_ris) @ H.transpose(-1, -2)  # G_l A s_l  [B, L, M]
    signal_power = (signal.abs() ** 2).sum(dim=(-1, -2)) / (L * system.num_bs_antennas)
    noise_var = signal_power / (10.0 ** (p.snr_db / 10.0))
    noise = rng.complex_normal(keys, STREAM_NOISE, (L, system.num_bs_antennas))
    y = signal + torch.sqrt(noise_var)[:, None, None] * noise

    return SceneBatch(
        indices=idx,
        y=y,
        H=H,
        codes=codes.contiguous(),
        snr_db=p.snr_db,
        noise_var=noise_var,
        kappa=p.kappa,
        num_sources=p.num_sources,
        valid=p.valid,
        azimuth_deg=p.azimuth_deg,
        elevation_deg=p.elevation_deg,
        range_m=p.range_m,
        powers=p.powers,
        R_true=true_covariance(system, p.azimuth_deg, p.elevation_deg, p.range_m, p.powers),
        R_samp=sample_covariance(system, y, H, codes),
    )
