"""The ONE builder of the effective covariance R_eff that MUSIC sees.

``R_eff = (1−β)·R̃_pred + β·R̃_samp``, each term Hermitian-symmetrized and trace-normalized
to N, plus optional diagonal loading ε·I with ε relative to the mean eigenvalue, then
trace-normalized to N again (system_model.md, "Effective covariance"). Training losses,
validation and inference all call :func:`effective_covariance`; nothing else mixes covariances.
"""

from __future__ import annotations

import math

import torch

__all__ = ["effective_covariance", "hermitian_trace_normalized"]


def hermitian_trace_normalized(R: torch.Tensor) -> torch.Tensor:
    """½(R + R^H) scaled to trace N (N = last dimension). A zero trace gives non-finite output."""
    n = R.shape[-1]
    R = 0.5 * (R + R.mH)
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)
    return R * (n / tr)[..., None, None]


def _check_beta(beta: float | torch.Tensor, batch: int) -> float | torch.Tensor:
    if isinstance(beta, torch.Tensor):
        if beta.ndim == 0:
            beta = beta.reshape(1)
        if beta.ndim != 1 or beta.shape[0] not in (1, batch):
            raise ValueError(f"beta: expected a float or a [B={batch}] tensor, got shape {tuple(beta.shape)}")
        # One host sync per call: a wrong β silently changes what MUSIC sees, so it is worth it.
        bad = ~(torch.isfinite(beta) & (beta >= 0) & (beta <= 1))
        if bool(bad.any()):
            raise ValueError(f"beta must satisfy 0 <= beta <= 1, got {beta.detach().cpu().tolist()}")
        return beta.detach()[:, None, None]
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise ValueError(f"beta must be a float or a tensor, got {beta!r}")
    if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
        raise ValueError(f"beta must satisfy 0 <= beta <= 1, got {beta!r}")
    return float(beta)


def effective_covariance(R_pred: torch.Tensor, R_samp: torch.Tensor, beta: float | torch.Tensor,
                         diag_loading: float = 0.0) -> torch.Tensor:
    """R_eff [B, N, N]: Hermitian, trace N, PSD whenever both inputs are PSD.

    ``beta``: 0 = pure learned covariance, 1 = pure sample covariance; a float or a [B]
    tensor in [0, 1] (ValueError otherwise). ``diag_loading`` ε ≥ 0 adds ε·(tr R/N)·I,
    i.e. ε times the mean eigenvalue, so it means the same at any scale and N; it raises
    every eigenvalue of the mixed (trace-N) matrix by ε before the final renormalization.
    Both terms are always evaluated, so a non-finite input never disappears behind β = 0.
    """
    if R_pred.shape != R_samp.shape or R_pred.ndim != 3 or R_pred.shape[-1] != R_pred.shape[-2]:
        raise ValueError(f"R_pred {tuple(R_pred.shape)} and R_samp {tuple(R_samp.shape)} must both be [B, N, N]")
    if isinstance(diag_loading, bool) or not (math.isfinite(diag_loading) and diag_loading >= 0.0):
        raise ValueError(f"diag_loading must be finite and >= 0, got {diag_loading!r}")
    b = _check_beta(beta, R_pred.shape[0])
    dtype = torch.promote_types(R_pred.dtype, R_samp.dtype)
    if isinstance(b, torch.Tensor):  # keep complex64 complex64: a float64 β must not promote R
        b = b.to(device=R_pred.device, dtype=dtype.to_real())
    R = (1.0 - b) * hermitian_trace_normalized(R_pred.to(dtype)) + b * hermitian_trace_normalized(R_samp.to(dtype))
    if diag_loading > 0.0:
        n = R.shape[-1]
        mean_eig = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1) / n
        eye = torch.eye(n, dtype=R.dtype, device=R.device)
        R = R + (diag_loading * mean_eig)[:, None, None] * eye
    return hermitian_trace_normalized(R)
