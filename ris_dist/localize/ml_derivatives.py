"""Closed-form gradient and Fisher information of the concentrated ML likelihood (no autograd).

The refinement (:mod:`.ml_refine`) needs, at positions x with the powers p fitted there
(:func:`~ris_dist.localize.ml_likelihood.fit_powers`), the gradient of the concentrated NLL and a
curvature. Both follow from the whitened products of the coded steering vectors b = G_l a_k, their
derivatives d = G_l ∂a_k and the snapshot y, taken through Woodbury in the S-dimensional source
space (as the likelihood itself is; nothing M×M is factored, so noise-free data stays solvable):

    Γ_xy = X^H C_l^-1 Y = (X^H Y − (X^H B) P^½ K^-1 P^½ (B^H Y)) / σ²,   K = σ² I + P^½ B^H B P^½.

With ∂_(k,a) C_l = p_k (d b_k^H + b_k d^H) and ∂_(p_m) C_l = b_m b_m^H (Slepian–Bangs, as in
:func:`ris_dist.crb.fisher`):

- ∂NLL/∂x_(k,a) = 2 p_k Σ_l Re[Γ_bd[k,(k,a)] − u_b[k] conj(u_d[(k,a)])],  u = Γ_·y;
- ∂NLL/∂p_m = Σ_l (Γ_bb[m,m] − |u_b[m]|²);
- F_xx as in the CRB (:func:`ris_dist.crb.position_fisher`), F_xp[(k,a),m] = 2 p_k Σ_l Re[Γ_bb[k,m] Γ_bd[m,(k,a)]], F_pp = Σ_l |Γ_bb|².

The powers are concentrated on the SNR's energy, p·e(x) = E with e_k = Σ_l ‖b_k‖², so the
gradient of the concentrated NLL is ∂_x NLL − (∂_p NLL · p)/E · p_k ∂e_k/∂x (the derivative along
the energy rescaling; at the constrained optimum it is the envelope theorem's exact gradient).
The curvature returned beside the known-power Fisher matrix is its Schur complement in the powers,
F_xx − F_xp F_pp^-1 F_px: the Fisher information of the positions with the powers unknown, the
expected Hessian of the concentrated NLL.
"""

from __future__ import annotations

import torch

from ..config import SystemConfig
from ..crb import position_fisher, steering_and_jacobian
from .ml_likelihood import Measurements, coded_product

#: Ridge of F_pp (relative to its largest diagonal entry) in the Schur complement: two slots at one
#: position, or a source at power 0, make it singular.
POWER_FISHER_RIDGE_REL = 1e-9


def likelihood_derivatives(system: SystemConfig, meas: Measurements, positions: torch.Tensor,
                           active: torch.Tensor, powers: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient ``[B, 3S]``, known-power Fisher ``[B, 3S, 3S]``, unknown-power Fisher ``[B, 3S, 3S]``)
    of the concentrated NLL at positions ``[B, S, 3]`` (φ deg, θ deg, r m) with ``powers [B, S]``
    (0 in inactive slots), parameters ordered (k, a) with a fastest."""
    B, S, _ = positions.shape
    a, da = steering_and_jacobian(system, positions.reshape(-1, 3).to(torch.float64))
    a, da = a.reshape(B, S, -1), da.reshape(B, S, -1, 3)
    p = torch.where(active, powers.to(torch.float64), torch.zeros_like(powers, dtype=torch.float64))
    b = coded_product(meas.codes, meas.H, a)  # rows b_k^T  [B, L, S, M]
    d = coded_product(meas.codes, meas.H, da.permute(0, 1, 3, 2).reshape(B, 3 * S, -1))  # [B, L, 3S, M]
    U = torch.cat([b, d], 2)  # [B, L, 4S, M]
    gram = U.conj() @ U.mT  # U^H U  [B, L, 4S, 4S]
    uy = (U.conj() @ meas.y[..., None]).squeeze(-1)  # U^H y  [B, L, 4S]
    sigma2 = meas.noise_var[:, None, None, None]
    root = p.clamp_min(0).sqrt().to(gram.dtype)[:, None, :]  # [B, 1, S]
    eye = torch.eye(S, dtype=gram.dtype, device=gram.device)
    bu = root[..., :, None] * gram[..., :S, :]  # P^½ B^H U  [B, L, S, 4S]
    K = sigma2 * eye + bu[..., :S] * root[..., None, :]
    chol = torch.linalg.cholesky(K)
    rhs = torch.cat([bu, (root * uy[..., :S]).unsqueeze(-1)], -1)
    solved = torch.cholesky_solve(rhs, chol)  # K^-1 P^½ B^H [U | y]
    whitened = (torch.cat([gram, uy.unsqueeze(-1)], -1) - bu.mH @ solved) / sigma2  # U^H C^-1 [U | y]
    g_bb, g_bd, g_dd = whitened[..., :S, :S], whitened[..., :S, S:4 * S], whitened[..., S:4 * S, S:4 * S]
    u_b, u_d = whitened[..., :S, -1], whitened[..., S:4 * S, -1]

    idx = torch.arange(3 * S, device=p.device)
    owner = idx // 3  # source k of parameter (k, a)
    p_x = p[:, owner]  # [B, 3S]
    own_bd = g_bd[..., owner, idx]  # Γ_bd[k, (k, a)]  [B, L, 3S]
    grad_x = 2.0 * p_x * (own_bd - u_b[..., owner] * u_d.conj()).real.sum(1)
    grad_p = (torch.diagonal(g_bb, dim1=-2, dim2=-1).real - u_b.real.square() - u_b.imag.square()).sum(1)
    energy_slope = 2.0 * gram[..., owner, S + idx].real.sum(1)  # ∂e_k/∂x_(k,a)  [B, 3S]
    energy = (p * torch.diagonal(gram[..., :S, :S], dim1=-2, dim2=-1).real.sum(1)).sum(-1)
    multiplier = (grad_p * p).sum(-1) / energy.clamp_min(torch.finfo(energy.dtype).tiny)
    gradient = grad_x - multiplier[:, None] * p_x * energy_slope

    F_xx = position_fisher(g_bb, g_bd, g_dd, p)
    F_xp = 2.0 * p_x[:, :, None] * (g_bb[..., owner, :] * g_bd.mT).real.sum(1)  # [B, 3S, S]
    F_pp = (g_bb.real.square() + g_bb.imag.square()).sum(1)
    live = active & (p > 0)
    real_eye = torch.eye(S, dtype=F_pp.dtype, device=F_pp.device)
    F_pp = torch.where(live[:, :, None] & live[:, None, :], F_pp, real_eye)
    F_xp = torch.where(live[:, None, :], F_xp, torch.zeros_like(F_xp))
    ridge = POWER_FISHER_RIDGE_REL * torch.diagonal(F_pp, dim1=-2, dim2=-1).amax(-1)
    coupling = F_xp @ torch.linalg.solve(F_pp + ridge[:, None, None] * real_eye, F_xp.mT)
    F_conc = F_xx - 0.5 * (coupling + coupling.mT)
    return gradient, F_xx, F_conc

