"""Public inference API: a trained checkpoint → source estimates for new measurements.

    from ris_dist import Localizer
    loc = Localizer.from_checkpoint("runs/<run>/phase2/best")
    est = loc(y, H, codes, snr_db)              # K̂ from the model's K head (or MDL, see k_source)
    est = loc(y, H, codes, snr_db, num_sources=k)  # oracle K
    est = loc(y, H, codes, snr_db, refine="ml")   # MUSIC peaks refined on the ML likelihood
    est = loc(y, H, codes, snr_db, refine="ml_k")  # ... and K̂ from that likelihood, head as prior

The K head's probabilities become K̂ by the rule the run validated with (``k_decision`` in
meta.json: ``map`` = argmax, or ``success`` = the expected-success rule with the table
calibrated on the run's validation scenes; :mod:`ris_dist.localize.decision`).

The path from measurements to MUSIC is the same as in training and validation:
R_samp from :func:`ris_dist.physics.sample_covariance`, R_pred from the model, and R_eff from
:func:`ris_dist.covariance.effective_covariance` (the one builder of what MUSIC sees), with
the β the run ended with. Nothing here mixes covariances on its own.

``refine="ml"`` (constructor default or per call) takes MUSIC's peaks on R_eff, with the K̂ above,
as starting points of a few Fisher-scoring iterations on the stochastic ML likelihood of the
same measurements (:func:`ris_dist.localize.ml_refine`, system_model.md "Refinement").
``refine="ml_k"`` fits every k = 1..K_max that way, from the best k-subset of MUSIC's k + 2 best
peaks with a k-dimensional signal subspace (below 10 dB SNR, B4's sequential grid start competes;
knobs: ``select``, a :class:`SelectConfig`), and takes K̂ from the fits' BIC with the K head's
probabilities as a prior (:func:`ris_dist.localize.ml_refine_select`); ``k_source="mdl"``
drops the prior. With ``num_sources`` given, only the counts it holds are fitted.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

import torch

from .config import ConfigError, SystemConfig, load_system
from .config.schema import build
from .covariance import effective_covariance
from .localize import (
    K_DECISIONS,
    Estimates,
    KDecision,
    SuccessTable,
    choose_num_sources,
    localize,
    ml_refine,
    ml_refine_select,
    music_candidates,
)
from .localize.ml_likelihood import check_shapes
from .localize.ml_select import SelectConfig
from .model import CovarianceNet, ModelConfig, build_model
from .physics import sample_covariance
from .train.checkpoint import BEST_WEIGHTS, CheckpointError, load_weights

log = logging.getLogger(__name__)

KSource = Literal["head", "mdl"]
Refine = Literal["ml", "ml_k"] | None
REFINE_CHOICES = (None, "ml", "ml_k")
META_FILE = "meta.json"

__all__ = ["CheckpointError", "KSource", "Localizer"]


def _read_meta(path: Path) -> dict[str, Any]:
    """meta.json of a ``best/`` folder, checked for the keys inference needs (one-line errors)."""
    file = path / META_FILE
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (expected a folder written by the trainer)")
    try:
        meta = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file}: invalid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: expected a JSON object, got {type(meta).__name__}")
    for key, kind in (("system", str), ("system_overrides", dict), ("model", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{file}: key {key!r} missing or not a {kind.__name__}")
    beta = meta.get("beta", 0.0)
    # bool is an int subclass; a true/false β is a writer bug, not 1.0/0.0.
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and 0 <= beta <= 1):
        raise CheckpointError(f"{file}: key 'beta' must be a number in [0, 1], got {beta!r}")
    if meta.get("k_source", "head") not in ("head", "mdl", "oracle"):
        raise CheckpointError(f"{file}: key 'k_source' must be 'head', 'mdl' or 'oracle', got {meta['k_source']!r}")
    if meta.get("k_decision", "map") not in K_DECISIONS:
        raise CheckpointError(f"{file}: key 'k_decision' must be one of {K_DECISIONS}, got {meta['k_decision']!r}")
    loading = meta.get("diag_loading", 0.0)
    if isinstance(loading, bool) or not isinstance(loading, (int, float)) or not (math.isfinite(loading)
                                                                                   and loading >= 0):
        raise CheckpointError(f"{file}: key 'diag_loading' must be a number >= 0, got {loading!r}")
    return meta


def _read_success_table(meta: dict[str, Any], file: Path, system: SystemConfig) -> SuccessTable | None:
    """The K̂ table of a ``k_decision: success`` checkpoint (None for ``map``), checked against the system."""
    if meta.get("k_decision", "map") != "success":
        return None
    try:
        table = SuccessTable.from_json(meta.get("k_success_table"))
    except ValueError as err:
        raise CheckpointError(f"{file}: key 'k_success_table' (needed by k_decision 'success'): {err}") from None
    if table.max_sources != system.max_sources:
        raise CheckpointError(f"{file}: key 'k_success_table' covers K = 1..{table.max_sources}, "
                              f"system {system.name!r} K = 1..{system.max_sources}")
    return table


class Localizer:
    """A trained covariance model plus MUSIC: ``(y, H, codes, snr_db) → Estimates``.

    Build it with :meth:`from_checkpoint`. Inputs are batched (``y [B, L, M]``,
    ``H [B, M, N]``, ``codes [B, L, N]`` complex, ``snr_db [B]``) and may live on any
    device: they are moved to the model's device, and the estimates come back on the
    device of ``y``.
    """

    def __init__(self, system: SystemConfig, model: CovarianceNet, beta: float = 0.0, k_source: KSource = "head",
                 diag_loading: float = 0.0, device: torch.device | str | None = None,
                 meta: dict[str, Any] | None = None, k_decision: KDecision = "map",
                 success_table: SuccessTable | None = None, refine: Refine = None,
                 refine_iterations: int = 4, select: SelectConfig | None = None) -> None:
        if k_source not in ("head", "mdl"):
            raise ValueError(f"k_source must be 'head' or 'mdl', got {k_source!r}")
        if k_decision not in K_DECISIONS or (k_decision == "success" and success_table is None):
            raise ValueError(f"k_decision must be 'map' or 'success' (with a success_table), got {k_decision!r}")
        if success_table is not None and success_table.max_sources != system.max_sources:
            raise ValueError(f"success_table covers K = 1..{success_table.max_sources}, "
                             f"the system K = 1..{system.max_sources}")
        if not (math.isfinite(beta) and 0.0 <= beta <= 1.0):
            raise ValueError(f"beta must satisfy 0 <= beta <= 1, got {beta!r}")
        _check_refine(refine, refine_iterations)
        self.system = system
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # eval() for good: dropout (if any) must not randomize inference.
        self.model = model.to(self.device).eval()
        self.beta = float(beta)
        self.k_source: KSource = k_source
        self.diag_loading = float(diag_loading)
        self.k_decision: KDecision = k_decision
        self.success_table = success_table
        self.meta = dict(meta or {})
        self.refine: Refine = refine
        self.refine_iterations = int(refine_iterations)
        self.select = select or SelectConfig()

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str | None = None,
                        k_source: KSource | None = None, expect_system: SystemConfig | None = None) -> "Localizer":
        """Load ``path/model.pt`` and ``path/meta.json`` (a run's ``best/`` folder).

        Rebuilds the system from ``meta["system"]`` + ``meta["system_overrides"]`` and the
        model from ``meta["model"]``; takes β (default 0) and the K source (default "head")
        from the meta unless ``k_source`` is given. A run validated with the true K
        (``k_source: oracle``) has no true K at inference, so its own K̂ comes from the K head
        (with a warning); pass ``num_sources`` for oracle K. Raises :class:`CheckpointError`
        (one line, naming the file) for a missing folder, a missing or corrupt file, or
        weights that do not fit the model. With ``expect_system``, a checkpoint trained on
        another system is refused before its weights are read (their shapes depend on it).
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint folder (expected a run's best/ folder)")
        meta = _read_meta(path)
        meta_file = path / META_FILE
        try:
            system = load_system(meta["system"], **meta["system_overrides"])
            model_cfg = build(ModelConfig, meta["model"], prefix="model.")
        except ConfigError as err:
            raise CheckpointError(f"{meta_file}: {' '.join(str(err).split())}") from None
        if expect_system is not None and system != expect_system:
            raise CheckpointError(f"{path}: trained on system {system.name!r} ({meta_file}), which differs from "
                                  f"the system of the data ({expect_system.name!r})")
        state = load_weights(path)  # weights_only=True inside; one-line CheckpointError naming model.pt
        model = build_model(system, model_cfg)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            # torch's message spans many lines; keep the first 200 characters on one line.
            raise CheckpointError(f"{path / BEST_WEIGHTS}: weights do not fit the model in {META_FILE} "
                                  f"({' '.join(str(err).split())[:200]})") from None
        if k_source is None:
            k_source = meta.get("k_source", "head")
            if k_source == "oracle":
                log.warning("%s: the run validated with the true K (k_source: oracle), which inference does not "
                            "have; K̂ comes from the K head unless num_sources is passed", meta_file)
                k_source = "head"
        k_decision = meta.get("k_decision", "map")
        table = _read_success_table(meta, meta_file, system)
        log.info("loaded %s: system %s, step %s, beta %.3g, K from %s (%s)", path, system.name, meta.get("step"),
                 meta.get("beta", 0.0), k_source, k_decision)
        return cls(system, model, beta=float(meta.get("beta", 0.0)), k_source=k_source,
                   diag_loading=float(meta.get("diag_loading", 0.0)),
                   device=device if device is not None else "cpu", meta=meta, k_decision=k_decision,
                   success_table=table)

    def _check_inputs(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                      snr_db: torch.Tensor) -> tuple[torch.Tensor, ...]:
        snr_db = check_shapes(self.system, y, H, codes, snr_db)
        dev = self.device
        return (y.to(dev, torch.complex64), H.to(dev, torch.complex64), codes.to(dev, torch.complex64),
                snr_db.to(dev, torch.float32))

    @torch.no_grad()
    def _forward(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                 snr_db: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(R_eff [B, N, N], k_logits [B, K_max]) on the model's device."""
        y, H, codes, snr_db = self._check_inputs(y, H, codes, snr_db)
        R_samp = sample_covariance(self.system, y, H, codes)
        out = self.model(y, H, codes, snr_db)
        R_eff = effective_covariance(out.R_pred, R_samp, self.beta, self.diag_loading)
        return R_eff, out.k_logits

    def covariance(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor,
                   snr_db: torch.Tensor) -> torch.Tensor:
        """R_eff ``[B, N, N]`` (complex64, trace N) that MUSIC sees, on the device of ``y``."""
        R_eff, _ = self._forward(y, H, codes, snr_db)
        return R_eff.to(y.device)

    def _choose(self, logits: torch.Tensor, snr_db: torch.Tensor, k_decision: KDecision | None) -> torch.Tensor:
        rule = self.k_decision if k_decision is None else k_decision
        snr = torch.as_tensor(snr_db, dtype=torch.float32).to(self.device).expand(logits.shape[0])
        return choose_num_sources(logits, snr, rule, self.success_table)

    def num_sources(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor,
                    k_decision: KDecision | None = None) -> torch.Tensor:
        """K̂ ``[B]`` int64 from the model's K head by ``k_decision`` (default: the checkpoint's
        rule), on the device of ``y``."""
        _, logits = self._forward(y, H, codes, snr_db)
        return self._choose(logits, snr_db, k_decision).to(y.device)

    def __call__(self, y: torch.Tensor, H: torch.Tensor, codes: torch.Tensor, snr_db: torch.Tensor,
                 num_sources: torch.Tensor | None = None, k_decision: KDecision | None = None,
                 refine: Refine | str = "default", refine_iterations: int | None = None) -> Estimates:
        """Localize the sources of a batch of scenes.

        ``num_sources`` ``[B]`` (oracle K) overrides the source count; otherwise K̂ comes
        from the K head (``k_source="head"``, by ``k_decision``, default the checkpoint's rule)
        or from MDL on R_eff's eigenvalues (``"mdl"``). ``refine`` (None, "ml" or "ml_k"; default
        the constructor's): "ml" refines the MUSIC peaks by ``refine_iterations`` steps on the ML
        likelihood, keeping K̂; "ml_k" also takes K̂ from that likelihood (module docstring).
        Refined estimates stay inside the configured (φ, θ, r) box.
        """
        refine = self.refine if refine == "default" else refine
        iterations = self.refine_iterations if refine_iterations is None else refine_iterations
        _check_refine(refine, iterations)
        R_eff, logits = self._forward(y, H, codes, snr_db)
        if refine == "ml_k":
            return self._select(R_eff, logits, y, H, codes, snr_db, num_sources, iterations).to(y.device)
        if num_sources is not None:
            k = torch.as_tensor(num_sources).to(self.device)
        elif self.k_source == "head":
            k = self._choose(logits, snr_db, k_decision)
        else:
            k = None  # localize estimates K̂ with MDL
        est = localize(R_eff, self.system, num_sources=k, method="coarse_to_fine", order_method="mdl")
        if refine == "ml":
            y_, H_, codes_, snr_ = self._check_inputs(y, H, codes, snr_db)
            est = ml_refine(est, y_, H_, codes_, snr_, self.system, iterations=iterations)
        return est.to(y.device)

    def _select(self, R_eff: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, H: torch.Tensor,
                codes: torch.Tensor, snr_db: torch.Tensor, num_sources: torch.Tensor | None,
                iterations: int) -> Estimates:
        """``refine="ml_k"``: every k's fit from MUSIC's starts, K̂ by the likelihood with the head's prior."""
        kmax = self.system.max_sources
        k = None if num_sources is None else torch.as_tensor(num_sources).to(self.device)
        fitted = range(1, kmax + 1) if k is None else set(k.tolist())  # oracle K: only the counts present
        starts = [music_candidates(R_eff, self.system, c, c + self.select.extra_starts) if c in fitted else None
                  for c in range(1, kmax + 1)]
        log_prior = torch.log_softmax(logits.to(torch.float64), -1) if self.k_source == "head" else None
        y_, H_, codes_, snr_ = self._check_inputs(y, H, codes, snr_db)
        return ml_refine_select(starts, y_, H_, codes_, snr_, self.system, iterations=iterations,
                                order_penalty=self.select.order_penalty, log_prior=log_prior,
                                prior_weight=self.select.prior_weight, num_sources=k,
                                grid_start_below_db=self.select.grid_start_below_db)

    def __repr__(self) -> str:
        return (f"Localizer(system={self.system.name!r}, beta={self.beta:g}, k_source={self.k_source!r}, "
                f"k_decision={self.k_decision!r}, refine={self.refine!r}, device={str(self.device)!r})")


def _check_refine(refine: Any, iterations: Any) -> None:
    if refine not in REFINE_CHOICES:
        raise ValueError(f"refine must be 'ml', 'ml_k' or None, got {refine!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"refine_iterations must be an integer >= 0, got {iterations!r}")
