"""Joint local refinement of the ML likelihood: projected Newton / Fisher scoring inside the prior box.

Each iteration takes the gradient and the Hessian of the concentrated negative log-likelihood
(powers re-estimated at every position, :func:`~ris_dist.localize.ml_likelihood.concentrated_nll`)
by autograd. Two steps are tried: Newton on that Hessian (where it is positive definite; it
includes the coupling through the powers) and Fisher scoring on the Fisher information at the
current positions and powers from :func:`ris_dist.crb.fisher` (the expected Hessian of the same
NLL with the powers known, the matrix the CRB inverts; robust far from the optimum), both
Levenberg–Marquardt-damped in Jacobi-scaled coordinates. The candidates ``x + α·step`` for both
steps and every α of :data:`STEP_SIZES` are clipped to
the configured (φ, θ, r) box and scored in one batched call, and each scene keeps the best
one if it lowers its NLL. So the NLL never rises, no estimate leaves the box, and nothing
waits on the host inside the loop.
"""

from __future__ import annotations

import torch

from ..config import SystemConfig
from ..crb import fisher
from .ml_likelihood import Measurements, concentrated_nll

#: Fractions of the scoring step tried per iteration (a batched line search).
STEP_SIZES = (1.0, 0.5, 0.25, 0.1)


def prior_box(system: SystemConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) ``[3]`` float64 of (φ deg, θ deg, r m): the configured source region."""
    bounds = (system.azimuth_range_deg, system.elevation_range_deg, system.range_range_m)
    lo = torch.tensor([b[0] for b in bounds], dtype=torch.float64, device=device)
    hi = torch.tensor([b[1] for b in bounds], dtype=torch.float64, device=device)
    return lo, hi


def clamp_to_prior_box(system: SystemConfig, positions: torch.Tensor) -> torch.Tensor:
    """Positions ``[..., 3]`` (φ deg, θ deg, r m) clipped into the configured box."""
    lo, hi = prior_box(system, positions.device)
    return torch.maximum(torch.minimum(positions.to(torch.float64), hi), lo)


#: Floor of the σ² given to the Fisher matrix, relative to the received signal power per entry:
#: near noise-free data (σ² on its 1e-10 floor) make C_l too ill-conditioned for its Cholesky.
#: The Fisher matrix only scales the step (rescaled by the floor's ratio), so the floor costs no accuracy.
FISHER_NOISE_FLOOR_REL = 1e-6


class _FisherInputs:
    """The fields :func:`ris_dist.crb.fisher` reads, at estimated positions, powers and σ²."""

    def __init__(self, meas: Measurements, positions: torch.Tensor, active: torch.Tensor, powers: torch.Tensor):
        L, M = meas.y.shape[-2:]
        self.H, self.codes = meas.H, meas.codes
        self.noise_var = torch.maximum(meas.noise_var, FISHER_NOISE_FLOOR_REL * meas.signal_energy / (L * M))
        self.valid = active
        self.azimuth_deg, self.elevation_deg, self.range_m = positions.unbind(-1)
        self.powers = powers


def scoring_step(F: torch.Tensor, gradient: torch.Tensor, active: torch.Tensor, damping: float) -> torch.Tensor:
    """Step ``[B, 3S]`` = −(F_s + λI)^-1 g_s in Jacobi-scaled coordinates (F_s = D^-½ F D^-½).

    Parameters of inactive slots, of sources with power 0 (zero Fisher rows) and a non-finite
    gradient (two slots on one position) get no step.
    """
    diag = torch.diagonal(F, dim1=-2, dim2=-1)
    live = active.repeat_interleave(3, dim=1) & (diag > 0) & torch.isfinite(gradient)
    scale = torch.where(live, diag, torch.ones_like(diag)).rsqrt()
    eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
    both = live[:, :, None] & live[:, None, :]
    Fs = torch.where(both, F * scale[:, :, None] * scale[:, None, :], eye)
    g = torch.where(live, gradient, torch.zeros_like(gradient)) * scale
    step = -torch.linalg.solve(Fs + damping * eye, g.unsqueeze(-1)).squeeze(-1) * scale
    return torch.where(live & torch.isfinite(step), step, torch.zeros_like(step))


def _derivatives(system: SystemConfig, meas: Measurements, x: torch.Tensor, active: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient ``[B, 3S]``, Hessian ``[B, 3S, 3S]``, NLL ``[B]``, powers ``[B, S]``) of the
    concentrated NLL at ``x [B, S, 3]``. Scenes are independent, so the gradient of the summed NLL
    is every scene's gradient, and one Hessian-vector product per parameter index (the same unit
    direction in every scene) gives every scene's Hessian column: 3S double-backward passes."""
    B, S, _ = x.shape
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        nll, powers = concentrated_nll(system, meas, xg, active)
        (gradient,) = torch.autograd.grad(nll.sum(), xg, create_graph=True)
        flat = gradient.reshape(B, 3 * S)
        columns = []
        for j in range(3 * S):
            (column,) = torch.autograd.grad(flat[:, j].sum(), xg, retain_graph=j < 3 * S - 1)
            columns.append(column.reshape(B, 3 * S))
    hessian = torch.stack(columns, -1)
    return flat.detach(), 0.5 * (hessian + hessian.mT), nll.detach(), powers.detach()


def refine(system: SystemConfig, meas: Measurements, positions: torch.Tensor, active: torch.Tensor,
           iterations: int, damping: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Refine positions ``[B, S, 3]`` (φ deg, θ deg, r m) of the ``active [B, S]`` slots jointly.

    Returns (positions ``[B, S, 3]`` float64 inside the box, NLL ``[B]``, powers ``[B, S]``).
    """
    x = clamp_to_prior_box(system, positions.detach())
    B, S, _ = x.shape
    alphas = torch.tensor(STEP_SIZES, dtype=torch.float64, device=x.device)
    tries = 2 * len(STEP_SIZES)
    meas_tries = meas.repeat(tries)
    active_tries = active.repeat_interleave(tries, dim=0)
    for _ in range(iterations):
        gradient, hessian, nll, powers = _derivatives(system, meas, x, active)
        inputs = _FisherInputs(meas, x, active, powers)
        # Where σ² was floored for the Fisher matrix, the curvature of the high-SNR likelihood scales
        # as 1/σ²: rescaling keeps the scoring step the right length.
        F = fisher(inputs, system) * (inputs.noise_var / meas.noise_var)[:, None, None]
        # Two directions, both line-searched: Newton on the observed Hessian (it includes the powers'
        # coupling that the known-power Fisher matrix leaves out; where it is not positive definite
        # the Fisher matrix stands in) and Fisher scoring (robust far from the optimum).
        _, info = torch.linalg.cholesky_ex(hessian)
        newton_ok = (info == 0)[:, None, None] & torch.isfinite(hessian).all(-1, keepdim=True).all(-2, keepdim=True)
        steps = torch.stack([scoring_step(torch.where(newton_ok, hessian, F), gradient, active, damping),
                             scoring_step(F, gradient, active, damping)], 1).reshape(B, 2, 1, S, 3)
        candidates = clamp_to_prior_box(system, x[:, None, None] + alphas[None, None, :, None, None] * steps)
        candidates = candidates.reshape(B, tries, S, 3)
        with torch.no_grad():
            values, _ = concentrated_nll(system, meas_tries, candidates.reshape(B * tries, S, 3), active_tries)
        values = values.reshape(B, tries)
        best_value, best = values.min(-1)
        better = best_value < nll.detach()
        chosen = candidates[torch.arange(B, device=x.device), best]
        x = torch.where(better[:, None, None], chosen, x)
    with torch.no_grad():
        nll, powers = concentrated_nll(system, meas, x, active)
    return x, nll, powers
