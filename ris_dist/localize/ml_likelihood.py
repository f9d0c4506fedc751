"""The stochastic ML likelihood of coded RIS snapshots (system_model.md, "Baselines", B4).

Snapshot l is ``y_l ~ CN(0, C_l)``, ``C_l = G_l A P A^H G_l^H + σ² I_M`` with ``G_l = H·diag(c_l)``.
With ``B_l = G_l A`` (M×S for S source slots), the matrix determinant lemma and Woodbury give

    log det C_l   = M log σ² + log det(I_S + P B_l^H B_l / σ²)
    y^H C_l^-1 y = (‖y_l‖² − z_l^H (σ² I_S + P B_l^H B_l)^-1 P z_l) / σ²,   z_l = B_l^H y_l,

so every evaluation is an S×S solve (S ≤ K_max) on the Gram ``B_l^H B_l`` and the projections
``z_l``; nothing M×M or N×N is formed. :func:`negative_log_likelihood` evaluates the equivalent
Hermitian form σ² I + P^½ B^H B P^½ (determinant and solve from one Cholesky factorization).

Only what the learned model is given enters: y, H, the codes and the per-scene SNR.
σ² = mean|y|² / (1 + SNR) (the SNR is defined on the noise-free signal, so E|y|² = (1 + SNR)σ²),
floored at ``SIGMA2_FLOOR_REL``·mean|y|² so that noise-free data keeps C_l invertible.

Powers given positions (non-negative, total fixed by the SNR's definition): the non-negative
least-squares fit of the second-order statistics, ``min_{p ≥ 0} Σ_l ‖y_l y_l^H − σ² I − B_l P B_l^H‖_F²``
(exact, by enumerating the 2^S supports, S ≤ 5), then scaled so that
``Σ_k p_k Σ_l ‖G_l a_k‖² = SNR·L·M·σ²``. For one source that is ``p = SNR·L·M·σ² / Σ_l ‖G_l a‖²``.
From there a few projected Fisher-scoring steps of the likelihood itself (each rescaled to that
energy, each kept only where it lowers the NLL) make the NLL the likelihood concentrated in the
powers: the moment fit weighs snapshots' cross terms that the likelihood does not, and with
several overlapping sources it can leave one at power 0.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from ..config import SystemConfig
from ..physics.steering import steering

#: Lower bound of σ² relative to mean|y|² (≈ 100 dB): noise-free data would make C_l singular.
SIGMA2_FLOOR_REL = 1e-10
#: Largest allowed | |c_ln| − 1 |: the likelihood uses the codes as given, but the data model
#: (and R_samp's back-projection) assumes a unit-modulus RIS.
CODE_MODULUS_TOL = 1e-3
#: Ridge on the NNLS normal equations relative to their largest diagonal entry: two slots at
#: one position make them singular.
NNLS_RIDGE_REL = 1e-12
#: Fisher-scoring steps of the powers after the moment fit. The moment fit alone can set a source's
#: power to 0 where several sources overlap (`full`, K = 5 at 30 dB: an NLL 13 000 above that
#: of the true powers); three steps reach the likelihood's optimum to 1e-6 nats on those scenes.
POWER_SCORING_ITERATIONS = 3


@dataclass
class Measurements:
    """One batch of coded snapshots in complex128, with the noise and signal levels derived from the SNR."""

    y: torch.Tensor  # [B, L, M]
    H: torch.Tensor  # [B, M, N]
    codes: torch.Tensor  # [B, L, N]
    noise_var: torch.Tensor  # [B] estimated σ²
    signal_energy: torch.Tensor  # [B] SNR·L·M·σ² = Σ_k p_k Σ_l ‖G_l a_k‖²
    y_norm2: torch.Tensor  # [B, L] ‖y_l‖²

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def select(self, rows) -> "Measurements":
        return Measurements(**{k: getattr(self, k)[rows] for k in self.__dataclass_fields__})

    def repeat(self, times: int) -> "Measurements":
        """Each scene ``times`` times in a row (scene-major), for evaluating several candidates at once."""
        return Measurements(**{k: getattr(self, k).repeat_interleave(times, dim=0) for k in self.__dataclass_fields__})


def _first_bad(mask: torch.Tensor) -> int:
    return int(torch.nonzero(mask)[0, 0])


def check_shapes(system: SystemConfig, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db) -> torch.Tensor:
    """Check the shapes of a measurement batch against ``system``; return ``snr_db`` as ``[B]``
    float64 on the device of ``y``. One-line ``ValueError`` naming the argument."""
    L, M, N = system.num_snapshots, system.num_bs_antennas, system.num_elements
    if y.ndim != 3 or tuple(y.shape[1:]) != (L, M) or y.shape[0] < 1:
        raise ValueError(f"y: expected [B, L={L}, M={M}] for system {system.name!r}, got {tuple(y.shape)}")
    B = y.shape[0]
    for name, t, shape in (("H", H, (B, M, N)), ("codes", codes, (B, L, N))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: expected {list(shape)} for system {system.name!r}, got {tuple(t.shape)}")
    snr_db = torch.as_tensor(snr_db, device=y.device)
    if snr_db.is_complex() or snr_db.dtype == torch.bool:
        raise ValueError(f"snr_db: expected real numbers, got dtype {snr_db.dtype}")
    snr_db = snr_db.to(torch.float64)
    if snr_db.ndim == 0:
        snr_db = snr_db.expand(B)
    if tuple(snr_db.shape) != (B,):
        raise ValueError(f"snr_db: expected [B={B}] or a scalar, got {tuple(snr_db.shape)}")
    return snr_db


def measurements(system: SystemConfig, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db) -> Measurements:
    """Check the inputs against ``system`` and derive σ²; one-line ``ValueError`` naming the argument."""
    L, M = system.num_snapshots, system.num_bs_antennas
    for name, t in (("y", y), ("H", H), ("codes", codes)):
        if not isinstance(t, torch.Tensor) or not t.is_complex():
            raise ValueError(f"{name}: expected a complex torch.Tensor, got "
                             f"{getattr(t, 'dtype', type(t).__name__)}")
    snr_db = check_shapes(system, y, H, codes, snr_db)
    for name, t in (("y", y), ("H", H), ("codes", codes)):
        finite = torch.isfinite(torch.view_as_real(t)).flatten(1).all(1)
        if not bool(finite.all()):
            raise ValueError(f"{name}: non-finite entries (NaN or Inf) in scene {_first_bad(~finite)} of the batch")
    if not bool(torch.isfinite(snr_db).all()):
        bad = _first_bad(~torch.isfinite(snr_db)[:, None])
        raise ValueError(f"snr_db: non-finite value {float(snr_db[bad])} in scene {bad} of the batch")
    modulus_error = (codes.abs() - 1.0).abs().flatten(1).amax(1)
    if not bool((modulus_error <= CODE_MODULUS_TOL).all()):
        bad = _first_bad((modulus_error > CODE_MODULUS_TOL)[:, None])
        raise ValueError(f"codes: not unit-modulus in scene {bad} of the batch (max ||c| − 1| = "
                         f"{float(modulus_error[bad]):.3g} > {CODE_MODULUS_TOL:g}); the model assumes a phase-only RIS")
    y64, H64, c64 = (t.to(torch.complex128) for t in (y, H, codes))
    y_norm2 = y64.real.square().sum(-1) + y64.imag.square().sum(-1)  # [B, L]
    mean_power = y_norm2.sum(-1) / (L * M)
    if not bool((mean_power > 0).all()):
        raise ValueError(f"y: all-zero snapshots in scene {_first_bad((mean_power <= 0)[:, None])} of the batch")
    snr = 10.0 ** (snr_db / 10.0)
    noise_var = torch.maximum(mean_power / (1.0 + snr), SIGMA2_FLOOR_REL * mean_power)
    # L·M·(mean|y|² − σ²) = SNR·L·M·σ², and stays the received energy where σ² sits on its floor.
    return Measurements(y=y64, H=H64, codes=c64, noise_var=noise_var,
                        signal_energy=L * M * (mean_power - noise_var), y_norm2=y_norm2)


def source_steering(system: SystemConfig, positions: torch.Tensor) -> torch.Tensor:
    """Steering ``[B, S, N]`` complex128 for positions ``[B, S, 3]`` (φ deg, θ deg, r m), differentiable."""
    x = positions.to(torch.float64)
    return steering(system, x[..., 0], x[..., 1], x[..., 2])


def coded_steering(meas: Measurements, a: torch.Tensor) -> torch.Tensor:
    """``G_l a_s`` for steering ``a [B, S, N]``, laid out ``[B, L, S, M]`` (a row per source).

    One batched GEMM per scene, ``(c_l ⊙ a_s)_{l,s} · Hᵀ``: the three-operand einsum it replaces
    took ~10× longer on CPU, and this is the refinement's innermost product.
    """
    return coded_product(meas.codes, meas.H, a)


def coded_product(codes: torch.Tensor, H: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``G_l a_s = H (c_l ⊙ a_s)`` ``[B, L, S, M]`` from codes ``[B, L, N]``, H ``[B, M, N]``, a ``[B, S, N]``."""
    B, L, N = codes.shape
    S = a.shape[1]
    coded = (codes[:, :, None, :] * a[:, None]).reshape(B, L * S, N)
    return (coded @ H.mT).reshape(B, L, S, H.shape[1])


def one_source_spectrum(y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Σ_l |(G_l a_s)^H y_l|² / ‖G_l a_s‖² ``[B, S]`` for steering ``a [B, S, N]``: the likelihood of
    one source at a_s with each snapshot's symbol fitted (deterministic ML), up to constants.

    Unlike the Bartlett spectrum of the back-projected snapshots it is not weighted by ‖G_l a‖²,
    so its maximum is unbiased for one noise-free source. Unchecked inputs (a model feature).
    """
    g = coded_product(codes, H, a)  # [B, L, S, M]
    fit = (g.conj() * y[:, :, None, :]).sum(-1).abs() ** 2
    return (fit / (g.abs() ** 2).sum(-1)).sum(1)


def projections(meas: Measurements, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gram ``B_l^H B_l`` ``[B, L, S, S]``, ``z_l = B_l^H y_l`` ``[B, L, S]``) for steering ``a [B, S, N]``."""
    rows = coded_steering(meas, a).conj()  # (G_l a_s)^H as rows  [B, L, S, M]
    return rows @ rows.conj().mT, (rows @ meas.y[..., None]).squeeze(-1)


def _supports(slots: int, device: torch.device) -> torch.Tensor:
    """Every subset of the slots as a 0/1 float64 mask ``[2^S, S]`` (the empty one first)."""
    rows = list(itertools.product((0.0, 1.0), repeat=slots))
    return torch.tensor(sorted(rows, key=sum), dtype=torch.float64, device=device)


def estimate_powers(meas: Measurements, gram: torch.Tensor, z: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Powers ``[B, S]`` (0 in inactive slots): SNR-scaled NNLS on the second-order statistics.

    Normal equations of ``Σ_l ‖y_l y_l^H − σ²I − Σ_k p_k b_lk b_lk^H‖_F²``: T p = r with
    ``T_kj = Σ_l |b_lk^H b_lj|²`` and ``r_k = Σ_l (|z_lk|² − σ² ‖b_lk‖²)``. The non-negative
    optimum is the least-squares solution on some support, and every support's solution that is
    non-negative is a candidate, so the best feasible one over all 2^S supports is exact.
    Where the fit leaves every power at 0 (the positions explain no power) the SNR's energy is
    split evenly between the active slots.
    """
    slots = gram.shape[-1]
    sigma2 = meas.noise_var[:, None]
    g = torch.diagonal(gram, dim1=-2, dim2=-1).real  # ‖b_lk‖²  [B, L, S]
    T = (gram.real.square() + gram.imag.square()).sum(1)  # [B, S, S]
    r = (z.real.square() + z.imag.square() - sigma2[..., None] * g).sum(1)  # [B, S]
    masks = _supports(slots, gram.device)  # [Q, S]
    allowed = ~((masks[None] > 0) & ~active[:, None, :]).any(-1)  # [B, Q]
    outer = masks[:, :, None] * masks[:, None, :]
    ridge = NNLS_RIDGE_REL * torch.diagonal(T, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(T.dtype).tiny)
    eye = torch.eye(slots, dtype=T.dtype, device=T.device)
    Tq = T[:, None] * outer + torch.diag_embed(1.0 - masks) + ridge[:, None, None, None] * eye
    p = torch.linalg.solve(Tq, (r[:, None, :] * masks).unsqueeze(-1)).squeeze(-1) * masks  # [B, Q, S]
    objective = (p * (T[:, None] @ p.unsqueeze(-1)).squeeze(-1)).sum(-1) - 2.0 * (r[:, None, :] * p).sum(-1)
    feasible = allowed & (p >= 0).all(-1) & torch.isfinite(objective)
    best = torch.where(feasible, objective, torch.full_like(objective, math.inf)).argmin(-1)  # empty set: always feasible
    p = p.gather(1, best[:, None, None].expand(-1, 1, slots))[:, 0]
    energy = g.sum(1)  # Σ_l ‖G_l a_k‖²  [B, S]
    fitted = (p * energy).sum(-1)
    even = torch.where(active, 1.0 / (active.sum(-1, keepdim=True) * energy.clamp_min(torch.finfo(energy.dtype).tiny)),
                       torch.zeros_like(energy))
    share = torch.where((fitted > 0)[:, None], p / fitted.clamp_min(torch.finfo(p.dtype).tiny)[:, None], even)
    return share * meas.signal_energy[:, None]


def _power_scoring_step(meas: Measurements, gram: torch.Tensor, z: torch.Tensor, active: torch.Tensor,
                        powers: torch.Tensor) -> torch.Tensor:
    """One projected Fisher-scoring step of the powers ``[B, S]`` on the NLL, rescaled to the SNR's energy.

    With ``Q_l = B_l^H C_l^-1 B_l`` and ``u_l = B_l^H C_l^-1 y_l`` (S×S by Woodbury), the gradient is
    ``g_k = Σ_l (Q_l,kk − |u_l,k|²)`` and the Fisher matrix ``F_kj = Σ_l |Q_l,kj|²``.
    """
    slots = gram.shape[-1]
    sigma2 = meas.noise_var[:, None, None, None]
    root = powers.clamp_min(torch.finfo(torch.float64).tiny).sqrt().to(gram.dtype)[:, None, :]  # [B, 1, S]
    eye = torch.eye(slots, dtype=gram.dtype, device=gram.device)
    rg = root[..., :, None] * gram  # P^½ B^H B  [B, L, S, S]
    inner = sigma2 * eye + rg * root[..., None, :]  # σ² I + P^½ B^H B P^½
    solved = torch.linalg.solve(inner, torch.cat([rg, (root * z).unsqueeze(-1)], -1))
    Q = (gram - rg.mH @ solved[..., :slots]) / sigma2
    u = (z - (rg.mH @ solved[..., slots:]).squeeze(-1)) / sigma2[..., 0]
    gradient = (torch.diagonal(Q, dim1=-2, dim2=-1).real - u.real.square() - u.imag.square()).sum(1)  # [B, S]
    real_eye = torch.eye(slots, dtype=gradient.dtype, device=gradient.device)
    F = torch.where(active[:, :, None] & active[:, None, :], (Q.real.square() + Q.imag.square()).sum(1), real_eye)
    # Two slots at one position make F singular, as they make the moment fit's normal equations.
    ridge = NNLS_RIDGE_REL * torch.diagonal(F, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(F.dtype).tiny)
    step, info = torch.linalg.solve_ex(F + ridge[:, None, None] * real_eye, gradient.unsqueeze(-1))
    usable = (info == 0)[:, None] & active & torch.isfinite(step[..., 0])
    p = torch.where(usable, powers - step[..., 0], powers).clamp_min(0.0)
    fitted = (p * torch.diagonal(gram, dim1=-2, dim2=-1).real.sum(1)).sum(-1)
    scale = meas.signal_energy / fitted.clamp_min(torch.finfo(p.dtype).tiny)
    return torch.where((fitted > 0)[:, None], p * scale[:, None], powers)


def fit_powers(meas: Measurements, gram: torch.Tensor, z: torch.Tensor, active: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL ``[B]``, powers ``[B, S]``): the moment fit, then :data:`POWER_SCORING_ITERATIONS`
    Fisher-scoring steps of the likelihood, each kept where it lowers the NLL (so it never rises)."""
    powers = estimate_powers(meas, gram, z, active)
    M = meas.y.shape[-1]
    nll = negative_log_likelihood(meas.noise_var, meas.y_norm2, M, gram, z, powers)
    for _ in range(POWER_SCORING_ITERATIONS):
        trial = _power_scoring_step(meas, gram, z, active, powers)
        value = negative_log_likelihood(meas.noise_var, meas.y_norm2, M, gram, z, trial)
        better = value < nll
        powers = torch.where(better[:, None], trial, powers)
        nll = torch.where(better, value, nll)
    return nll, powers


def negative_log_likelihood(noise_var: torch.Tensor, y_norm2: torch.Tensor, num_antennas: int,
                            gram: torch.Tensor, z: torch.Tensor, powers: torch.Tensor) -> torch.Tensor:
    """``Σ_l [log det C_l + y_l^H C_l^-1 y_l]`` ``[B]`` (float64; the constant L·M·log π left out)
    from σ² ``[B]``, ‖y_l‖² ``[B, L]``, the Grams ``[B, L, S, S]``, ``z [B, L, S]`` and powers ``[B, S]``."""
    slots = gram.shape[-1]
    sigma2 = noise_var[:, None]
    # Symmetric form σ² I + P^½ B^H B P^½ (Hermitian PD: one Cholesky gives the determinant and the
    # solve). The clamp keeps the square root's derivative finite where a power is exactly 0.
    root = powers.clamp_min(torch.finfo(torch.float64).tiny).sqrt().to(gram.dtype)[:, None, :]  # [B, 1, S]
    eye = torch.eye(slots, dtype=gram.dtype, device=gram.device)
    S = sigma2[..., None, None] * eye + root[..., :, None] * gram * root[..., None, :]
    chol = torch.linalg.cholesky(S)
    logdet = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1).real).sum(-1)  # [B, L]
    w = torch.linalg.solve_triangular(chol, (root * z).unsqueeze(-1), upper=False).squeeze(-1)
    quad = w.real.square().sum(-1) + w.imag.square().sum(-1)
    per_snapshot = (num_antennas - slots) * torch.log(sigma2) + logdet + (y_norm2 - quad) / sigma2
    return per_snapshot.sum(-1)


def concentrated_nll(system: SystemConfig, meas: Measurements, positions: torch.Tensor,
                     active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(NLL ``[B]``, powers ``[B, S]``) at positions ``[B, S, 3]`` with the powers estimated from them.

    Inactive slots get power 0 and no say in the value; they still need a finite position.
    """
    a = source_steering(system, positions)
    gram, z = projections(meas, a)
    return fit_powers(meas, gram, z, active)
