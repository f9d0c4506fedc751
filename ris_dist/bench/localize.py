"""Benchmark of the MUSIC search: coarse_to_fine against the dense-grid reference.

Both methods run on the same covariances (R_samp at a fixed SNR, oracle K, so the comparison
is about the search alone) in the same process; the result dict is printed as JSON by
``python -m ris_dist.bench localize``.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..config import SystemConfig, load_system
from ..localize import Estimates, SearchConfig, localize
from ..physics import simulate

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``localize`` benchmark."""
    parser.add_argument("--tiny-scenes", type=int, default=256, help="tiny scenes (0 skips tiny)")
    parser.add_argument("--full-scenes", type=int, default=8, help="full scenes (0 skips full)")
    parser.add_argument("--snr-db", type=float, default=20.0, help="fixed per-scene SNR of R_samp (dB)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of the scenes")
    parser.add_argument("--dense-spacing-tiny", type=float, default=0.02,
                        help="dense reference grid step for tiny (resolution cells)")
    parser.add_argument("--dense-spacing-full", type=float, default=0.05,
                        help="dense reference grid step for full (resolution cells)")
    parser.add_argument("--repeats", type=int, default=3, help="timed coarse_to_fine runs (best is kept)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> tuple[Estimates, float]:
    best, result = math.inf, None
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return result, best


def matched_errors(system: SystemConfig, truth, est: Estimates) -> np.ndarray:
    """Signed (Δφ deg, Δθ deg, Δr m) ``[P, 3]`` over Hungarian-matched pairs of all scenes.

    Cost as in system_model.md, "Metrics": sqrt((Δφ/τ_φ)² + (Δθ/τ_θ)² + (Δr/τ_r)²).
    """
    scale = np.array([system.success.azimuth_deg, system.success.elevation_deg, system.success.range_abs_m])
    t = np.stack([truth.azimuth_deg.cpu().numpy(), truth.elevation_deg.cpu().numpy(), truth.range_m.cpu().numpy()], -1)
    e = np.stack([est.azimuth_deg.cpu().numpy(), est.elevation_deg.cpu().numpy(), est.range_m.cpu().numpy()], -1)
    t_valid, e_valid = truth.valid.cpu().numpy(), est.valid.cpu().numpy()
    errors = []
    for b in range(t.shape[0]):
        tb, eb = t[b][t_valid[b]], e[b][e_valid[b]]
        cost = np.sqrt((((tb[:, None, :] - eb[None, :, :]) / scale) ** 2).sum(-1))
        rows, cols = linear_sum_assignment(cost)
        errors.append(eb[cols] - tb[rows])
    return np.concatenate(errors)


def _rmse(errors: np.ndarray) -> dict[str, float]:
    if errors.shape[0] == 0:
        return {"azimuth_deg": math.nan, "elevation_deg": math.nan, "range_m": math.nan}
    rmse = np.sqrt((errors.astype(np.float64) ** 2).mean(0))
    return {"azimuth_deg": float(rmse[0]), "elevation_deg": float(rmse[1]), "range_m": float(rmse[2])}


def _inliers(system: SystemConfig, truth, errors: np.ndarray) -> np.ndarray:
    """Rows of ``errors`` within the success thresholds (their RMSE measures search precision;
    the all-pairs RMSE is dominated by sources that MUSIC on R_samp misses altogether)."""
    ranges = np.concatenate([truth.range_m[b][truth.valid[b]].cpu().numpy() for b in range(len(truth))])
    ok = ((np.abs(errors[:, 0]) <= system.success.azimuth_deg)
          & (np.abs(errors[:, 1]) <= system.success.elevation_deg)
          & (np.abs(errors[:, 2]) <= np.maximum(system.success.range_abs_m, system.success.range_rel * ranges)))
    return errors[ok]


def _relative_change(new: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    return {key: (new[key] - reference[key]) / reference[key] if reference[key] > 0 else 0.0 for key in new}


def bench_system(name: str, scenes: int, args: argparse.Namespace, dense_spacing_cells: float) -> dict[str, Any]:
    """Time and score both search methods on ``scenes`` R_samp of system ``name``."""
    device = torch.device(args.device)
    system = load_system(name, snr_range_db=(args.snr_db, args.snr_db))
    batch = simulate(system, torch.arange(scenes), seed=args.seed, split="test", device=device)
    R, k = batch.R_samp, batch.num_sources
    dense_config = SearchConfig(dense_spacing_cells=dense_spacing_cells)

    localize(R[:2], system, num_sources=k[:2])  # builds and caches the coarse grid's steering matrix
    fine, fine_s = _timed(lambda: localize(R, system, num_sources=k), device, args.repeats)
    log.info("%s: coarse_to_fine %.4f s for %d scenes", name, fine_s, scenes)
    dense, dense_s = _timed(lambda: localize(R, system, num_sources=k, method="dense", search=dense_config),
                            device, 1)
    log.info("%s: dense %.4f s for %d scenes", name, dense_s, scenes)

    errors_fine = matched_errors(system, batch, fine)
    errors_dense = matched_errors(system, batch, dense)
    rmse_fine, rmse_dense = _rmse(errors_fine), _rmse(errors_dense)
    rel = _relative_change(rmse_fine, rmse_dense)
    inliers_fine, inliers_dense = _inliers(system, batch, errors_fine), _inliers(system, batch, errors_dense)
    rmse_in_fine, rmse_in_dense = _rmse(inliers_fine), _rmse(inliers_dense)
    search = SearchConfig()
    return {
        "scenes": scenes,
        "sources": int(k.sum()),
        "snr_db": args.snr_db,
        "covariance": "R_samp",
        "num_sources": "oracle",
        "coarse_spacing_cells": search.coarse_spacing_cells,
        "dense_spacing_cells": dense_spacing_cells,
        "coarse_to_fine_s": fine_s,
        "dense_s": dense_s,
        "speedup": dense_s / fine_s,
        "rmse_coarse_to_fine": rmse_fine,
        "rmse_dense": rmse_dense,
        "rmse_rel_change": rel,
        "max_abs_rmse_rel_change": max(abs(v) for v in rel.values()),
        "inlier_pairs_coarse_to_fine": int(inliers_fine.shape[0]),
        "inlier_pairs_dense": int(inliers_dense.shape[0]),
        "rmse_inliers_coarse_to_fine": rmse_in_fine,
        "rmse_inliers_dense": rmse_in_dense,
        "rmse_inliers_rel_change": _relative_change(rmse_in_fine, rmse_in_dense),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-serializable dict (per system, plus the device)."""
    result: dict[str, Any] = {"device": str(args.device), "torch_threads": torch.get_num_threads()}
    if args.tiny_scenes > 0:
        result["tiny"] = bench_system("tiny", args.tiny_scenes, args, args.dense_spacing_tiny)
    if args.full_scenes > 0:
        result["full"] = bench_system("full", args.full_scenes, args, args.dense_spacing_full)
    return result
