"""Choosing K̂ from the K head's class probabilities ``p(k | x)``, k = 1..K_max.

Two rules (``val.k_decision``, saved in ``best/meta.json`` and served by the Localizer):

- ``map``: K̂ = argmax_k p(k | x). It maximizes K_acc.
- ``success``: K̂ = argmax_k p(k | x)·q_k(SNR), the Bayes decision for the success metric
  (system_model.md: K̂ = K *and* every source within tolerance). ``q_k(bin)`` is how often a
  scene with k sources in that SNR bin is localized within tolerance when MUSIC is told
  K̂ = k: a property of R_eff and the search, calibrated on validation scenes by
  :func:`fit_success_table`. Where k sources cannot be resolved (q_2 ≈ 0 at low SNR on
  ``tiny``) the rule reports fewer sources, the ones it can place. It gives up K_acc for
  success, so the head's own accuracy is still reported as ``k_head_acc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import torch

KDecision = Literal["map", "success"]
K_DECISIONS = ("map", "success")


@dataclass(frozen=True)
class SuccessTable:
    """``q_k`` per SNR bin: ``rate[b][k-1]`` for SNRs in ``[snr_edges_db[b], snr_edges_db[b+1])``.

    SNRs below the first edge or above the last use the end bins. ``num_scenes[b][k-1]`` is
    how many calibration scenes the cell rests on.
    """

    snr_edges_db: tuple[float, ...]
    rate: tuple[tuple[float, ...], ...]
    num_scenes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        edges = self.snr_edges_db
        if len(edges) < 2 or not all(math.isfinite(e) for e in edges) or any(
                b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"snr_edges_db: need >= 2 finite increasing edges, got {list(edges)}")
        bins = len(edges) - 1
        for key, table in (("rate", self.rate), ("num_scenes", self.num_scenes)):
            if len(table) != bins or len({len(row) for row in table}) != 1 or not table[0]:
                raise ValueError(f"{key}: need {bins} rows (one per SNR bin) of equal length K_max >= 1")
        if len(self.rate[0]) != len(self.num_scenes[0]):
            raise ValueError("rate and num_scenes: rows differ in length (K_max)")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x <= 1.0
                   for row in self.rate for x in row):
            raise ValueError(f"rate: every entry must be a number in [0, 1], got {[list(r) for r in self.rate]}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for row in self.num_scenes for n in row):
            raise ValueError("num_scenes: every entry must be an integer >= 0")

    @property
    def max_sources(self) -> int:
        return len(self.rate[0])

    def to_json(self) -> dict[str, Any]:
        return {"snr_edges_db": list(self.snr_edges_db), "rate": [list(r) for r in self.rate],
                "num_scenes": [list(r) for r in self.num_scenes]}

    @classmethod
    def from_json(cls, data: Any) -> "SuccessTable":
        """Inverse of :meth:`to_json`; a malformed table raises a one-line ValueError naming the key."""
        if not isinstance(data, dict):
            raise ValueError(f"expected an object with snr_edges_db, rate, num_scenes; got {type(data).__name__}")
        for key in ("snr_edges_db", "rate", "num_scenes"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"{key}: missing or not a list")
        if not all(isinstance(row, list) for key in ("rate", "num_scenes") for row in data[key]):
            raise ValueError("rate and num_scenes: every row must be a list")
        if not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in data["snr_edges_db"]):
            raise ValueError(f"snr_edges_db: every edge must be a number, got {data['snr_edges_db']}")
        return cls(tuple(float(e) for e in data["snr_edges_db"]), tuple(tuple(r) for r in data["rate"]),
                   tuple(tuple(r) for r in data["num_scenes"]))

    def choose(self, k_probs: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
        """K̂ ``[B]`` int64 = argmax_k p(k | x)·q_k(bin of snr_db); ties go to the smaller k."""
        if k_probs.ndim != 2 or k_probs.shape[-1] != self.max_sources:
            raise ValueError(f"k_probs: expected [B, {self.max_sources}], got {tuple(k_probs.shape)}")
        inner = torch.tensor(self.snr_edges_db[1:-1], dtype=torch.float32, device=k_probs.device)
        bins = torch.bucketize(snr_db.to(k_probs.device, torch.float32), inner, right=True)
        rate = torch.tensor(self.rate, dtype=torch.float32, device=k_probs.device)
        return (k_probs.float() * rate[bins]).argmax(-1) + 1


def fit_success_table(success_by_k: np.ndarray, k_true: np.ndarray, snr_db: np.ndarray,
                      snr_edges_db: Sequence[float]) -> SuccessTable:
    """Calibrate q_k per SNR bin from scenes localized with every candidate K̂.

    ``success_by_k[s, k-1]`` says whether scene s succeeded when MUSIC searched for k sources
    (false whenever k differs from its true K). q_k(bin) is the success rate over the bin's
    scenes with K = k, smoothed as (successes + 1) / (scenes + 2) so that an empty or small cell
    gives a finite rate rather than 0/0 or a hard 0.
    """
    success_by_k = np.asarray(success_by_k, bool)
    k_true, snr_db = np.asarray(k_true), np.asarray(snr_db, float)
    if success_by_k.ndim != 2 or success_by_k.shape[0] != k_true.shape[0] or k_true.shape != snr_db.shape:
        raise ValueError(f"success_by_k [S, K_max], k_true [S] and snr_db [S] disagree: "
                         f"{success_by_k.shape}, {k_true.shape}, {snr_db.shape}")
    edges = tuple(float(e) for e in snr_edges_db)
    bins = np.clip(np.searchsorted(np.asarray(edges[1:-1]), snr_db, side="right"), 0, len(edges) - 2)
    rate, count = [], []
    for b in range(len(edges) - 1):
        row_rate, row_count = [], []
        for k in range(1, success_by_k.shape[1] + 1):
            cell = (bins == b) & (k_true == k)
            n, s = int(cell.sum()), int(success_by_k[cell, k - 1].sum())
            row_rate.append((s + 1.0) / (n + 2.0))
            row_count.append(n)
        rate.append(tuple(row_rate))
        count.append(tuple(row_count))
    return SuccessTable(edges, tuple(rate), tuple(count))


def choose_num_sources(k_logits: torch.Tensor, snr_db: torch.Tensor, rule: KDecision = "map",
                       table: SuccessTable | None = None) -> torch.Tensor:
    """K̂ ``[B]`` int64 from the K head's logits ``[B, K_max]`` by ``rule`` (see the module docstring)."""
    if rule == "map":
        return k_logits.argmax(-1) + 1  # class j means K = j + 1
    if rule != "success":
        raise ValueError(f"k_decision must be one of {K_DECISIONS}, got {rule!r}")
    if table is None:
        raise ValueError("k_decision 'success' needs a calibrated SuccessTable")
    return table.choose(torch.softmax(k_logits.float(), -1), snr_db)
