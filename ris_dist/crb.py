"""Stochastic Cramér–Rao bound of (φ_k, θ_k, r_k) (system_model.md, "Physical limit"; baseline B3).

Each coded snapshot is ``y_l ~ CN(0, C_l)`` with ``C_l = G_l A P A^H G_l^H + σ² I_M`` and
``G_l = H·diag(c_l)``, independent over l, so the Slepian–Bangs formula sums over snapshots:

    F_ij = Σ_l tr(C_l^{-1} ∂_i C_l C_l^{-1} ∂_j C_l).

Powers P and noise σ² are known (the bound is therefore a lower bound on the bound with
nuisance parameters). Parameter i = (k, a) with a ∈ {φ [deg], θ [deg], r [m]}; the steering
derivatives come from forward-mode derivatives (``torch.func.jvp``) of the path difference
w.r.t. the angles *in degrees*, so the returned standard deviations are in degrees and metres directly.

Closed form used (exact, no M×M derivative matrices): with b_k = G_l a_k, d_i = G_l ∂_a a_k,
∂_i C_l = p_k (d_i b_k^H + b_k d_i^H), and Γ = U^H C_l^{-1} U for U = [b | d],

    F_(k,a),(m,c) = 2 p_k p_m Σ_l Re[ Γ_bd[k,(m,c)] Γ_bd[m,(k,a)] + Γ_bb[k,m] Γ_dd[(m,c),(k,a)] ].

Everything runs in float64/complex128 on the scenes' device, batched over scenes with the
K_max slots kept: invalid slots have p_k = 0, so their rows/columns of F are zero and are
replaced by the identity before inversion (block-diagonal, so the valid block's inverse is
unaffected). F is Jacobi-scaled to unit diagonal and inverted by ``eigh``; a scene whose
scaled F has condition number above ``1/RCOND`` (or a zero diagonal on a valid parameter) is
treated as singular, and all its valid slots get ``inf``. Invalid slots are NaN.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Protocol

import torch
from torch.func import jvp

from .config import SystemConfig
from .physics import path_difference, steering

log = logging.getLogger(__name__)

RCOND = 1e-12
"""Smallest eigenvalue ratio of the Jacobi-scaled Fisher matrix before it counts as singular."""

# Stands in for padded source slots so the steering derivative stays finite; p_k = 0 there.
_PLACEHOLDER = (0.0, 0.0, 1.0)


class CrbScenes(Protocol):
    """What :func:`crb` reads (a :class:`~ris_dist.physics.SceneBatch` fits)."""

    H: torch.Tensor  # [B, M, N]
    codes: torch.Tensor  # [B, L, N]
    noise_var: torch.Tensor  # [B]
    valid: torch.Tensor  # [B, K]
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    range_m: torch.Tensor
    powers: torch.Tensor  # [B, K] linear


def steering_and_jacobian(system: SystemConfig, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Steering ``a [S, N]`` and ``∂a/∂(φ_deg, θ_deg, r_m)`` ``[S, N, 3]`` for params ``[S, 3]`` (float64).

    ``a_n = N^-½ exp(−i k₀ δ_n)``, so ``∂a_n = −i k₀ a_n ∂δ_n``; the three columns of ``∂δ`` are
    forward-mode derivatives of the path difference, each one pass over all S at once.
    """
    def delta(p: torch.Tensor) -> torch.Tensor:
        return path_difference(system, p[:, 0], p[:, 1], p[:, 2])  # [S, N]

    eye = torch.eye(3, dtype=params.dtype, device=params.device)
    with warnings.catch_warnings():
        # torch's forward-AD decompositions still call torch.jit.script on first use (torch-internal).
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        columns = [jvp(delta, (params,), (eye[j].expand_as(params),)) for j in range(3)]
    a = steering(system, params[:, 0], params[:, 1], params[:, 2])
    k0 = 2.0 * math.pi / system.wavelength_m
    d_delta = torch.stack([c[1] for c in columns], -1)  # [S, N, 3]
    return a, (-1j * k0) * a[..., None] * d_delta


def fisher(scenes: CrbScenes, system: SystemConfig) -> torch.Tensor:
    """Fisher information ``[B, 3K, 3K]`` (float64), parameters ordered (k, a) with a fastest.

    Rows/columns of invalid slots are zero.
    """
    valid = scenes.valid.bool()
    bsz, kmax = valid.shape
    f64 = dict(dtype=torch.float64, device=valid.device)
    ph = torch.tensor(_PLACEHOLDER, **f64)
    params = torch.stack([scenes.azimuth_deg, scenes.elevation_deg, scenes.range_m], -1).to(**f64)
    params = torch.where(valid[..., None], params, ph)
    a, da = steering_and_jacobian(system, params.reshape(-1, 3))
    a = a.reshape(bsz, kmax, -1)  # [B, K, N]
    da = da.reshape(bsz, kmax, -1, 3)  # [B, K, N, 3]

    H = scenes.H.to(torch.complex128)
    codes = scenes.codes.to(torch.complex128)
    b = torch.einsum("bmn,bln,bkn->blmk", H, codes, a)  # G_l a_k  [B, L, M, K]
    d = torch.einsum("bmn,bln,bkna->blmka", H, codes, da).flatten(-2)  # G_l ∂a  [B, L, M, 3K]
    p = torch.where(valid, scenes.powers.to(torch.float64), torch.zeros((), **f64))
    noise = scenes.noise_var.to(torch.float64)

    M = H.shape[-2]
    C = (b * p[:, None, None, :].to(b.dtype)) @ b.mH
    C = C + noise[:, None, None, None] * torch.eye(M, dtype=C.dtype, device=C.device)
    chol = torch.linalg.cholesky(C)  # C is Hermitian PD whenever σ² > 0
    U = torch.cat([b, d], -1)  # [B, L, M, K + 3K]
    gram = U.mH @ torch.cholesky_solve(U, chol)  # Γ = U^H C^{-1} U
    return position_fisher(gram[..., :kmax, :kmax], gram[..., :kmax, kmax:], gram[..., kmax:, kmax:], p)


def position_fisher(g_bb: torch.Tensor, g_bd: torch.Tensor, g_dd: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """Slepian–Bangs Fisher information of the positions with the powers known, ``[B, 3S, 3S]``.

    From the whitened products Γ = Uᴴ C_l⁻¹ U of U = [b | d] (b_k = G_l a_k, d = G_l ∂a, per
    snapshot l): ``g_bb [B, L, S, S]``, ``g_bd [B, L, S, 3S]``, ``g_dd [B, L, 3S, 3S]``, parameters
    ordered (k, a) with a fastest, and ``powers [B, S]`` (0 in invalid slots):

        F[(k,a),(m,c)] = 2 p_k p_m Σ_l Re[Γ_bd[k,(m,c)] Γ_bd[m,(k,a)] + Γ_bb[k,m] Γ_dd[(m,c),(k,a)]].

    Shared by the CRB and the ML refinement's scoring (:mod:`ris_dist.localize.ml_derivatives`).
    """
    S = powers.shape[-1]
    owner = torch.arange(3 * S, device=powers.device) // 3  # source k of parameter (k, a)
    bd_rows = g_bd[..., owner, :]  # Γ_bd[k(i), j]  [B, L, 3S, 3S]
    t1 = bd_rows * bd_rows.mT
    t2 = g_bb[..., owner[:, None], owner[None, :]] * g_dd.mT
    p_x = powers[:, owner]
    F = 2.0 * (p_x[:, :, None] * p_x[:, None, :]) * (t1 + t2).real.sum(1)
    return 0.5 * (F + F.mT)  # exact symmetry; the two terms are symmetric only up to rounding


def crb(scenes: CrbScenes, system: SystemConfig, batch_size: int = 1024) -> torch.Tensor:
    """Per-source CRB standard deviations ``[B, K_max, 3]`` float64: (φ deg, θ deg, r m).

    NaN in invalid slots; ``inf`` in every valid slot of a scene whose Fisher matrix is
    singular (see module docstring). Computed in chunks of ``batch_size`` scenes.
    """
    n = int(scenes.valid.shape[0])
    if n == 0:
        return torch.empty(0, int(scenes.valid.shape[1]), 3, dtype=torch.float64, device=scenes.valid.device)
    parts = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        chunk = _Slice(scenes, rows)
        parts.append(_crb_chunk(chunk, system))
    return torch.cat(parts)


def success_at_crb(std: torch.Tensor, valid: torch.Tensor, range_m: torch.Tensor,
                   system: SystemConfig) -> torch.Tensor:
    """Per scene ``[B]``: the success probability of an efficient estimator with the true K.

    The estimator's errors are modelled as zero-mean Gaussians with the CRB standard
    deviations ``std [B, K_max, 3]`` (from :func:`crb`), independent across parameters and
    sources, and a scene succeeds when every valid source lands inside the success box of
    :mod:`ris_dist.metrics` (|Δφ| ≤ τ_φ, |Δθ| ≤ τ_θ, |Δr| ≤ max(τ_r, rel·r)). So the value is
    Π_k Π_a erf(τ_a / (√2 σ_ka)); a singular scene (σ = inf) gets 0.

    A reference for how far a method is from the physical limit, not a bound: it ignores the
    correlation of the errors, the threshold effect that puts every estimator above the CRB
    at low SNR, and estimators that use the prior (these can beat it there).
    """
    s = system.success
    tol = torch.stack([torch.full_like(range_m, s.azimuth_deg, dtype=torch.float64),
                       torch.full_like(range_m, s.elevation_deg, dtype=torch.float64),
                       torch.clamp(s.range_rel * range_m.to(torch.float64), min=s.range_abs_m)], dim=-1)
    per_param = torch.special.erf(tol / (math.sqrt(2.0) * std.to(torch.float64)))  # σ = inf -> 0
    per_source = torch.where(valid, per_param.prod(-1), torch.ones_like(per_param[..., 0]))
    return per_source.prod(-1)


class _Slice:
    """A view of the fields :func:`fisher` reads, restricted to some scene rows."""

    def __init__(self, scenes: CrbScenes, rows: slice) -> None:
        for name in ("H", "codes", "noise_var", "valid", "azimuth_deg", "elevation_deg", "range_m", "powers"):
            setattr(self, name, getattr(scenes, name)[rows])


def _crb_chunk(scenes: CrbScenes, system: SystemConfig) -> torch.Tensor:
    valid = scenes.valid.bool()
    bsz, kmax = valid.shape
    F = fisher(scenes, system)
    pvalid = valid.repeat_interleave(3, dim=1)  # [B, 3K]
    diag = torch.diagonal(F, dim1=-2, dim2=-1)
    # A valid parameter that moves nothing (zero information) makes F singular.
    dead = (pvalid & ~(diag > 0)).any(-1)
    scale = torch.where(pvalid & (diag > 0), diag, torch.ones_like(diag)).rsqrt()
    Fs = F * scale[:, :, None] * scale[:, None, :]
    eye = torch.eye(3 * kmax, dtype=F.dtype, device=F.device)
    both = pvalid[:, :, None] & pvalid[:, None, :]
    Fs = torch.where(both, Fs, eye.expand_as(Fs))  # identity block for invalid slots
    lam, vec = torch.linalg.eigh(Fs)
    singular = dead | ~(lam[:, 0] > RCOND * lam[:, -1])
    inv_lam = torch.where(lam > 0, 1.0 / lam.clamp_min(torch.finfo(lam.dtype).tiny), torch.full_like(lam, math.inf))
    var_scaled = torch.einsum("bij,bj,bij->bi", vec, inv_lam, vec)  # diag of Fs^{-1}
    std = torch.sqrt(var_scaled) * scale
    std = torch.where(singular[:, None], torch.full_like(std, math.inf), std)
    std = torch.where(pvalid, std, torch.full_like(std, math.nan))
    if bool(singular.any()):
        log.warning("CRB: %d of %d scenes have a singular Fisher matrix; their std is inf",
                    int(singular.sum()), bsz)
    return std.reshape(bsz, kmax, 3)
