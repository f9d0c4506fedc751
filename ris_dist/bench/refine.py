"""Benchmark of the ML refinement: closed-form Fisher scoring against Newton on the autograd Hessian.

The baseline is the refinement the project shipped before :mod:`ris_dist.localize.ml_derivatives`:
per iteration, the gradient and the Hessian of the concentrated NLL by autograd (one
double-backward pass per parameter, through the power fit), a Newton step on that Hessian where it
is positive definite and a Fisher-scoring step on :func:`ris_dist.crb.fisher`, both line-searched
with multiples (1, ½, ¼, 0.1). Both refinements start from the same perturbed true positions (the
true K; a fraction of a resolution cell off, as MUSIC's peaks are) of the same scenes, in one
process; the result reports both times, their ratio, and how the final NLLs and successes compare.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from ..config import SystemConfig, load_system
from ..crb import fisher
from ..localize.estimates import Estimates
from ..localize.ml import MLConfig
from ..localize.ml_likelihood import Measurements, concentrated_nll, measurements
from ..localize.ml_refine import clamp_to_prior_box, refine, scoring_step
from ..metrics import per_scene
from ..physics import SceneBatch, simulate
from ..physics.steering import resolution_cells

BASELINE_STEP_SIZES = (1.0, 0.5, 0.25, 0.1)
#: The baseline's floor of σ² for its Fisher matrix (relative to the received power per entry).
BASELINE_FISHER_NOISE_FLOOR_REL = 1e-6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``refine`` benchmark."""
    parser.add_argument("--tiny-scenes", type=int, default=500, help="tiny scenes (0 skips tiny)")
    parser.add_argument("--full-scenes", type=int, default=20, help="full scenes (0 skips full)")
    parser.add_argument("--iterations", type=int, default=MLConfig().refine_iterations, help="refinement iterations")
    parser.add_argument("--offset-cells", type=float, default=0.3,
                        help="start offset per axis from the truth, in resolution cells of (φ, θ, r)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of the scenes")


def _autograd_derivatives(system: SystemConfig, meas: Measurements, x: torch.Tensor, active: torch.Tensor):
    B, S, _ = x.shape
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        nll, powers = concentrated_nll(system, meas, xg, active)
        (gradient,) = torch.autograd.grad(nll.sum(), xg, create_graph=True)
        flat = gradient.reshape(B, 3 * S)
        columns = [torch.autograd.grad(flat[:, j].sum(), xg, retain_graph=j < 3 * S - 1)[0].reshape(B, 3 * S)
                   for j in range(3 * S)]
    hessian = torch.stack(columns, -1)
    return flat.detach(), 0.5 * (hessian + hessian.mT), nll.detach(), powers.detach()


class _FisherInputs:
    def __init__(self, meas: Measurements, positions: torch.Tensor, active: torch.Tensor, powers: torch.Tensor):
        L, M = meas.y.shape[-2:]
        floor = BASELINE_FISHER_NOISE_FLOOR_REL * meas.signal_energy / (L * M)
        self.H, self.codes, self.noise_var, self.valid = meas.H, meas.codes, torch.maximum(meas.noise_var, floor), active
        self.azimuth_deg, self.elevation_deg, self.range_m = positions.unbind(-1)
        self.powers = powers


def baseline_refine(system: SystemConfig, meas: Measurements, positions: torch.Tensor, active: torch.Tensor,
                    iterations: int, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous refinement (module docstring): (positions ``[B, S, 3]``, NLL ``[B]``)."""
    x = clamp_to_prior_box(system, positions)
    B, S, _ = x.shape
    alphas = torch.tensor(BASELINE_STEP_SIZES, dtype=torch.float64)
    tries = 2 * len(alphas)
    for _ in range(iterations):
        gradient, hessian, nll, powers = _autograd_derivatives(system, meas, x, active)
        inputs = _FisherInputs(meas, x, active, powers)
        F = fisher(inputs, system) * (inputs.noise_var / meas.noise_var)[:, None, None]
        _, info = torch.linalg.cholesky_ex(hessian)
        newton_ok = (info == 0)[:, None, None] & torch.isfinite(hessian).all(-1, keepdim=True).all(-2, keepdim=True)
        steps = torch.stack([scoring_step(torch.where(newton_ok, hessian, F), gradient, active, damping),
                             scoring_step(F, gradient, active, damping)], 1).reshape(B, 2, 1, S, 3)
        candidates = clamp_to_prior_box(system, x[:, None, None] + alphas[None, None, :, None, None] * steps)
        candidates = candidates.reshape(B, tries, S, 3)
        values, _ = concentrated_nll(system, meas.repeat(tries), candidates.reshape(B * tries, S, 3),
                                     active.repeat_interleave(tries, dim=0))
        best_value, best = values.reshape(B, tries).min(-1)
        x = torch.where((best_value < nll)[:, None, None], candidates[torch.arange(B), best], x)
    nll, _ = concentrated_nll(system, meas, x, active)
    return x, nll


def _success(system: SystemConfig, x: torch.Tensor, batch: SceneBatch) -> float:
    """Fraction of scenes that meet the success rule (``metrics.per_scene``) with the refined positions."""
    return float(per_scene(Estimates.from_positions(x, batch.valid), batch, system).success.mean())


def bench_system(name: str, scenes: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time both refinements on ``scenes`` scenes of system ``name`` from the same starts."""
    system = load_system(name)
    batch = simulate(system, torch.arange(scenes), seed=args.seed, split="test")
    meas = measurements(system, batch.y, batch.H, batch.codes, batch.snr_db)
    truth = torch.stack([batch.azimuth_deg, batch.elevation_deg, batch.range_m], -1).to(torch.float64)
    # c cells off on every axis: c·Δu (≈ radians of φ and θ near broadside) and c·Δ(1/r) (Δr = r²·Δ(1/r)).
    generator = torch.Generator().manual_seed(args.seed)
    signs = torch.randint(0, 2, truth.shape, generator=generator).to(torch.float64) * 2 - 1
    du, dw, dinv_r = resolution_cells(system)
    r = truth[..., 2]
    cells = torch.stack([torch.full_like(r, math.degrees(du)), torch.full_like(r, math.degrees(dw)), r * r * dinv_r], -1)
    offset = cells * args.offset_cells
    start = torch.where(batch.valid[..., None], truth + signs * offset, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    valid, damping = batch.valid, MLConfig().refine_damping

    refine(system, meas.select(slice(0, 2)), start[:2], valid[:2], 1, damping)  # warm-up (jvp's first call)
    began = time.perf_counter()
    x_new, nll_new, _ = refine(system, meas, start, valid, args.iterations, damping)
    new_s = time.perf_counter() - began
    began = time.perf_counter()
    x_old, nll_old = baseline_refine(system, meas, start, valid, args.iterations, damping)
    old_s = time.perf_counter() - began
    gap = nll_new - nll_old
    return {
        "scenes": scenes, "sources": int(valid.sum()), "iterations": args.iterations, "offset_cells": args.offset_cells,
        "closed_form_s": new_s, "autograd_newton_s": old_s, "speedup": old_s / new_s,
        "final_nll_gap_median": float(gap.median()), "final_nll_gap_mean": float(gap.mean()),
        "scenes_closed_form_lower_nll": float((gap < -1e-6).double().mean()),
        "scenes_autograd_lower_nll": float((gap > 1e-6).double().mean()),
        "success_closed_form": _success(system, x_new, batch),
        "success_autograd": _success(system, x_old, batch),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serializable dict per system."""
    result: dict[str, Any] = {"device": "cpu", "torch_threads": torch.get_num_threads()}
    with torch.no_grad():  # as the refinement runs in ml_localize; the baseline enables grad itself
        if args.tiny_scenes > 0:
            result["tiny"] = bench_system("tiny", args.tiny_scenes, args)
        if args.full_scenes > 0:
            result["full"] = bench_system("full", args.full_scenes, args)
    return result
