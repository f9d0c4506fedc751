"""Source-count estimation from covariance eigenvalues: MDL and AIC (Wax & Kailath, 1985)."""

from __future__ import annotations

from typing import Literal

import torch

OrderMethod = Literal["mdl", "aic"]

#: Eigenvalues below this fraction of the largest count as this fraction: rank-deficient covariances
#: (R_true, or R_samp with L < N) would otherwise put log 0 into the geometric mean.
EIGENVALUE_FLOOR_REL = 1e-10


def information_criterion(eigenvalues: torch.Tensor, num_snapshots: int,
                          method: OrderMethod = "mdl") -> torch.Tensor:
    """MDL or AIC for every candidate order k = 0..N−1, ``[B, N]`` (lower is better).

    ``eigenvalues`` is ``[B, N]`` in any order. With ℓ the N−k smallest eigenvalues,
    the likelihood term is −L·(N−k)·log(geometric mean(ℓ) / arithmetic mean(ℓ)); the penalty
    is ½·k(2N−k)·log L (MDL) or k(2N−k) (AIC, both sides doubled).
    """
    if method not in ("mdl", "aic"):
        raise ValueError(f"order_method must be 'mdl' or 'aic', got {method!r}")
    if num_snapshots < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    lam = torch.sort(eigenvalues.to(torch.float64), dim=-1, descending=True).values
    n = lam.shape[-1]
    lam = lam.clamp_min(lam[..., :1].clamp_min(torch.finfo(torch.float64).tiny) * EIGENVALUE_FLOOR_REL)
    # Suffix sums over the smallest eigenvalues give every candidate k in one pass.
    log_sum = torch.flip(torch.cumsum(torch.flip(torch.log(lam), [-1]), -1), [-1])  # Σ_{i≥k} log λ_i
    lin_sum = torch.flip(torch.cumsum(torch.flip(lam, [-1]), -1), [-1])  # Σ_{i≥k} λ_i
    k = torch.arange(n, dtype=torch.float64, device=lam.device)
    m = n - k
    log_ratio = log_sum / m - torch.log(lin_sum / m)  # log(geometric / arithmetic), ≤ 0
    free_params = k * (2 * n - k)
    snapshots = float(num_snapshots)
    if method == "mdl":
        return -snapshots * m * log_ratio + 0.5 * free_params * torch.log(torch.tensor(snapshots, dtype=torch.float64))
    return -2.0 * snapshots * m * log_ratio + 2.0 * free_params


def estimate_order(eigenvalues: torch.Tensor, num_snapshots: int, method: OrderMethod = "mdl",
                   max_sources: int | None = None) -> torch.Tensor:
    """K̂ ``[B]`` int64 minimizing MDL or AIC over k = 0..N−1, clipped to 1..max_sources.

    ``eigenvalues``: ``[B, N]`` real eigenvalues of Hermitian covariances (any order).
    ``num_snapshots``: the L of the criterion (system.num_snapshots for R_samp).
    """
    if eigenvalues.ndim != 2:
        raise ValueError(f"eigenvalues must be [B, N], got shape {tuple(eigenvalues.shape)}")
    criterion = information_criterion(eigenvalues, num_snapshots, method)
    k_hat = torch.argmin(criterion, dim=-1)
    upper = eigenvalues.shape[-1] - 1 if max_sources is None else max_sources
    return k_hat.clamp(1, upper).to(torch.int64)
