"""Localization metrics (system_model.md, "Metrics"): matching, counts, errors, success, ``k_loc``.

Per scene, the valid estimates are Hungarian-matched to the valid true sources
(``scipy.optimize.linear_sum_assignment``) with cost

    sqrt((Δφ/τ_φ)² + (Δθ/τ_θ)² + (Δr/τ_r)²),   τ_φ, τ_θ = success.azimuth_deg/elevation_deg,
                                                  τ_r = success.range_abs_m,

angle differences in degrees (no wrap: φ and θ lie well inside ±90°). Every matched pair
enters the error metrics, however far apart it is; a pair *is a detection* when it also
meets the per-pair thresholds |Δφ| ≤ τ_φ, |Δθ| ≤ τ_θ, |Δr| ≤ max(range_abs_m, range_rel·r_true)
(edges inclusive, with a float-rounding slack of a few ulps of the operands).

Aggregates (over scenes, or over matched pairs for errors):

* ``K_acc``, ``K_under``, ``K_over``: fractions of scenes with K̂ = K, K̂ < K, K̂ > K.
* ``rmse_az_deg``, ``rmse_el_deg``, ``rmse_range_m`` over matched pairs, plus ``median_*`` and
  ``p95_*`` of the absolute errors. NaN when there is no matched pair (never a silent 0).
* ``precision`` = detections / estimates, ``recall`` = detections / true sources (NaN on 0/0).
* ``success``: fraction of scenes with K̂ = K and every matched pair a detection.
* ``k_loc`` (the composite used to pick checkpoints)::

      k_loc = (K_acc + success) / 2  ·  1 / (1 + (rmse_az/τ_φ + rmse_el/τ_θ + rmse_range/τ_r) / 3)

  It is 1 exactly when every count is right and every error is 0, lies in [0, 1], rises
  with K_acc and success, and falls with every RMSE. When there is no matched pair at all
  (the RMSEs are NaN) the error factor is taken as 0, so ``k_loc = 0``: with K ≥ 1 per scene
  that only happens when K̂ = 0 everywhere, where K_acc and success are 0 anyway. ``k_loc`` is
  NaN only for an empty set of scenes.

Binning (:func:`table_by_bin`): ``by="snr_db"`` bins scenes by their SNR. ``by="range_m"``
bins the *matched pairs* by their true source range for the error metrics, and the *scenes*
by the mean true range of their valid sources for the scene-level metrics (counts, success,
precision, recall). Bins are half-open ``[lo, hi)`` except the last, which is closed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .config import SystemConfig
from .localize.estimates import Estimates


class Truth(Protocol):
    """What :func:`score` needs from the ground truth (a :class:`~ris_dist.physics.SceneBatch` fits)."""

    num_sources: torch.Tensor
    valid: torch.Tensor
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    range_m: torch.Tensor
    snr_db: torch.Tensor


# Edge slack in units of the operands' float eps: a threshold hit "exactly" in float32 inputs
# must still count, while anything a visible amount above it must not.
_EDGE_ULPS = 8.0


@dataclass
class PerScene:
    """Per-scene and per-matched-pair arrays (numpy, CPU). B scenes, P matched pairs in all."""

    k_true: np.ndarray  # [B] int
    k_hat: np.ndarray  # [B] int (number of valid estimates)
    success: np.ndarray  # [B] bool: K̂ = K and every matched pair a detection
    num_detected: np.ndarray  # [B] int: matched pairs within the thresholds
    snr_db: np.ndarray  # [B]
    mean_range_m: np.ndarray  # [B] mean true range of the valid sources (NaN when K = 0)
    pair_scene: np.ndarray  # [P] int scene row of each matched pair
    pair_true_slot: np.ndarray  # [P] int slot in the truth's K_max axis
    pair_est_slot: np.ndarray  # [P] int slot in the estimates' K_slots axis
    err_az_deg: np.ndarray  # [P] signed estimate − truth
    err_el_deg: np.ndarray  # [P]
    err_range_m: np.ndarray  # [P]
    true_range_m: np.ndarray  # [P]
    pair_detected: np.ndarray  # [P] bool

    def __len__(self) -> int:
        return int(self.k_true.shape[0])

    @staticmethod
    def cat(parts: Sequence["PerScene"]) -> "PerScene":
        """Concatenate batches' arrays; pair scene rows are shifted to the combined scene axis."""
        if not parts:
            raise ValueError("PerScene.cat needs at least one part")
        offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
        fields = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(PerScene)}
        fields["pair_scene"] = np.concatenate([p.pair_scene + o for p, o in zip(parts, offsets)])
        return PerScene(**fields)


def _np(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
    return t.detach().to("cpu").numpy().astype(dtype)


def _eps(t: torch.Tensor) -> float:
    return float(torch.finfo(t.dtype).eps) if t.is_floating_point() else float(np.finfo(np.float64).eps)


def _within(err: np.ndarray, a: np.ndarray, b: np.ndarray, tol: np.ndarray | float, eps: float) -> np.ndarray:
    """|err| ≤ tol, inclusive, with a slack of a few ulps of the operands (they may be float32)."""
    slack = _EDGE_ULPS * eps * np.maximum.reduce([np.abs(a), np.abs(b), np.broadcast_to(tol, a.shape)])
    return np.abs(err) <= tol + slack


def per_scene(estimates: Estimates, truth: Truth, system: SystemConfig) -> PerScene:
    """Match every scene and return per-scene flags and per-pair errors (see module docstring)."""
    if len(estimates) != int(truth.num_sources.shape[0]):
        raise ValueError(f"estimates cover {len(estimates)} scenes, truth {int(truth.num_sources.shape[0])}")
    s = system.success
    tau = np.array([s.azimuth_deg, s.elevation_deg, s.range_abs_m])
    est = np.stack([_np(estimates.azimuth_deg), _np(estimates.elevation_deg), _np(estimates.range_m)], -1)
    tru = np.stack([_np(truth.azimuth_deg), _np(truth.elevation_deg), _np(truth.range_m)], -1)
    est_valid = _np(estimates.valid, bool)
    tru_valid = _np(truth.valid, bool)
    eps = max(_eps(estimates.azimuth_deg), _eps(truth.azimuth_deg))

    n = est.shape[0]
    k_true = tru_valid.sum(1).astype(np.int64)
    k_hat = est_valid.sum(1).astype(np.int64)
    pairs: list[tuple[int, int, int]] = []
    for b in range(n):
        ti = np.flatnonzero(tru_valid[b])
        ei = np.flatnonzero(est_valid[b])
        if ti.size == 0 or ei.size == 0:
            continue
        diff = (est[b, ei][None, :, :] - tru[b, ti][:, None, :]) / tau  # [Kt, Ke, 3]
        cost = np.sqrt((diff ** 2).sum(-1))
        rows, cols = linear_sum_assignment(cost)
        pairs.extend((b, int(ti[r]), int(ei[c])) for r, c in zip(rows, cols))

    idx = np.array(pairs, dtype=np.int64).reshape(-1, 3)
    pb, pt, pe = idx[:, 0], idx[:, 1], idx[:, 2]
    e_true, e_est = tru[pb, pt], est[pb, pe]
    err = e_est - e_true
    range_tol = np.maximum(s.range_abs_m, s.range_rel * e_true[:, 2])
    detected = (_within(err[:, 0], e_true[:, 0], e_est[:, 0], s.azimuth_deg, eps)
                & _within(err[:, 1], e_true[:, 1], e_est[:, 1], s.elevation_deg, eps)
                & _within(err[:, 2], e_true[:, 2], e_est[:, 2], range_tol, eps))

    num_detected = np.bincount(pb, weights=detected.astype(np.float64), minlength=n).astype(np.int64)
    num_pairs = np.bincount(pb, minlength=n)
    success = (k_hat == k_true) & (num_detected == num_pairs) & (num_pairs == k_true)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_range = np.where(tru_valid, tru[..., 2], 0.0).sum(1) / k_true
    mean_range = np.where(k_true > 0, mean_range, np.nan)
    return PerScene(
        k_true=k_true, k_hat=k_hat, success=success, num_detected=num_detected,
        snr_db=_np(truth.snr_db), mean_range_m=mean_range,
        pair_scene=pb, pair_true_slot=pt, pair_est_slot=pe,
        err_az_deg=err[:, 0], err_el_deg=err[:, 1], err_range_m=err[:, 2],
        true_range_m=e_true[:, 2], pair_detected=detected,
    )


def _err_stats(prefix: str, err: np.ndarray) -> dict[str, float]:
    if err.size == 0:  # no matched pair: undefined, reported as NaN rather than 0
        return {f"rmse_{prefix}": math.nan, f"median_{prefix}": math.nan, f"p95_{prefix}": math.nan}
    a = np.abs(err)
    return {f"rmse_{prefix}": float(np.sqrt(np.mean(a ** 2))),
            f"median_{prefix}": float(np.median(a)),
            f"p95_{prefix}": float(np.percentile(a, 95))}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def k_loc_score(k_acc: float, success: float, rmse_az_deg: float, rmse_el_deg: float, rmse_range_m: float,
                system: SystemConfig) -> float:
    """The composite ``k_loc`` (formula in the module docstring)."""
    if math.isnan(k_acc) or math.isnan(success):
        return math.nan
    s = system.success
    penalty = (rmse_az_deg / s.azimuth_deg + rmse_el_deg / s.elevation_deg + rmse_range_m / s.range_abs_m) / 3.0
    factor = 0.0 if math.isnan(penalty) else 1.0 / (1.0 + penalty)
    return 0.5 * (k_acc + success) * factor


def aggregate(ps: PerScene, system: SystemConfig, scene_mask: np.ndarray | None = None,
              pair_mask: np.ndarray | None = None) -> dict[str, float]:
    """Metrics over the scenes in ``scene_mask`` and the matched pairs in ``pair_mask``.

    By default the pairs are those of the selected scenes. Counts are returned as
    ``num_scenes``, ``num_true``, ``num_est``, ``num_pairs``.
    """
    sm = np.ones(len(ps), bool) if scene_mask is None else np.asarray(scene_mask, bool)
    pm = sm[ps.pair_scene] if pair_mask is None else np.asarray(pair_mask, bool)
    n = int(sm.sum())
    kt, kh = ps.k_true[sm], ps.k_hat[sm]
    frac = (lambda x: float(np.mean(x))) if n else (lambda x: math.nan)
    out: dict[str, float] = {
        "num_scenes": n,
        "num_true": int(kt.sum()),
        "num_est": int(kh.sum()),
        "num_pairs": int(pm.sum()),
        "K_acc": frac(kh == kt),
        "K_under": frac(kh < kt),
        "K_over": frac(kh > kt),
        "success": frac(ps.success[sm]),
    }
    out.update(_err_stats("az_deg", ps.err_az_deg[pm]))
    out.update(_err_stats("el_deg", ps.err_el_deg[pm]))
    out.update(_err_stats("range_m", ps.err_range_m[pm]))
    detections = float(ps.num_detected[sm].sum())
    out["precision"] = _ratio(detections, float(kh.sum()))
    out["recall"] = _ratio(detections, float(kt.sum()))
    out["k_loc"] = k_loc_score(out["K_acc"], out["success"], out["rmse_az_deg"], out["rmse_el_deg"],
                               out["rmse_range_m"], system)
    return out


def score(estimates: Estimates, truth: Truth, system: SystemConfig) -> dict[str, float]:
    """All metrics over the batch (see the module docstring for definitions and ``k_loc``)."""
    return aggregate(per_scene(estimates, truth, system), system)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index per value for half-open bins, the last one closed; −1 outside (or NaN)."""
    i = np.searchsorted(edges, values, side="right") - 1
    i = np.where(values == edges[-1], len(edges) - 2, i)
    ok = np.isfinite(values) & (i >= 0) & (i < len(edges) - 1)
    return np.where(ok, i, -1)


def assign_bins(ps: PerScene, by: str, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scene bin ``[B]``, pair bin ``[P]``) for ``by`` in {"snr_db", "range_m"}; −1 = outside.

    SNR: pairs follow their scene. Range: scenes by mean true range, pairs by true range.
    """
    if by == "snr_db":
        scene_bin = bin_index(ps.snr_db, edges)
        return scene_bin, scene_bin[ps.pair_scene]
    if by == "range_m":
        return bin_index(ps.mean_range_m, edges), bin_index(ps.true_range_m, edges)
    raise ValueError(f"by must be 'snr_db' or 'range_m', got {by!r}")


def check_edges(edges: Sequence[float] | np.ndarray) -> np.ndarray:
    """Edges as float64, increasing, at least two; ValueError otherwise."""
    e = np.asarray(edges, np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(f"bin edges must be finite, increasing, with at least 2 entries, got {e.tolist()}")
    return e


def default_edges(by: str, system: SystemConfig, num_bins: int = 5) -> np.ndarray:
    """Evenly spaced bin edges across the system's configured SNR or range interval."""
    lo, hi = system.snr_range_db if by == "snr_db" else system.range_range_m
    if lo == hi:  # a point SNR range still needs one non-empty bin
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, num_bins + 1)


def table_by_ps(ps: PerScene, system: SystemConfig, by: str = "snr_db",
                edges: Sequence[float] | np.ndarray | None = None) -> list[dict[str, Any]]:
    """:func:`table_by_bin` on precomputed :class:`PerScene` arrays."""
    if by not in ("snr_db", "range_m"):
        raise ValueError(f"by must be 'snr_db' or 'range_m', got {by!r}")
    e = default_edges(by, system) if edges is None else check_edges(edges)
    scene_bin, pair_bin = assign_bins(ps, by, e)
    rows = []
    for i in range(e.size - 1):
        row: dict[str, Any] = {"by": by, "lo": float(e[i]), "hi": float(e[i + 1])}
        row.update(aggregate(ps, system, scene_mask=scene_bin == i, pair_mask=pair_bin == i))
        rows.append(row)
    return rows


def table_by_bin(estimates: Estimates, truth: Truth, system: SystemConfig, by: str = "snr_db",
                 edges: Sequence[float] | np.ndarray | None = None) -> list[dict[str, Any]]:
    """Per-bin metric dicts (keys of :func:`score` plus ``by``, ``lo``, ``hi``).

    ``by="snr_db"`` bins scenes by SNR; ``by="range_m"`` bins matched pairs by true range
    and scenes by their mean true range (module docstring). ``edges`` default to 5 even
    bins over the system's configured interval.
    """
    return table_by_ps(per_scene(estimates, truth, system), system, by, edges)
