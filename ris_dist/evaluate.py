"""Evaluate localization methods on a frozen test set against each other and the CRB.

    python -m ris_dist.evaluate --test-set DIR [--checkpoint RUN/phaseN/best] [--method b1|b2|b4|model ...]
        [--system tiny] [--out DIR]

Methods (system_model.md, "Baselines"): ``b1`` = MUSIC on R_samp with K̂ from MDL; ``b2`` =
oracle MUSIC on R_true with the true K; on request (``--method b4``), ``b4`` = stochastic ML on
the per-snapshot model with K̂ from its order rule and ``b4_oracle_k`` with the true K
(:mod:`ris_dist.localize.ml`). With ``--checkpoint`` the learned model joins them
through :class:`ris_dist.inference.Localizer`: ``model`` with its own K̂ (the checkpoint's
K̂ rule), ``model_map_k`` with the K head's argmax (listed by default only when the checkpoint's
rule is another one) and ``model_oracle_k`` with the true K; on request, ``model+ml`` refines
``model``'s estimates on the ML likelihood (its K̂ kept) and ``model+ml_k`` also takes K̂ from
that likelihood, the K head's probabilities as a prior (:class:`ris_dist.inference.Localizer`,
``refine="ml_k"``). Other methods plug in through :data:`METHODS`, a registry
of name → ``fn(batch, system) -> Estimates``. B3, the CRB, is computed once per scene and
reported next to every RMSE.

Writes to the output folder: ``results.json`` (overall, per-SNR-bin and per-range-bin
metrics per method and the CRB summary; NaN is written as ``null`` and ±∞ as the strings
``"inf"``/``"-inf"``), ``report.md`` (per method, a table over SNR bins and one over range
bins with RMSE and RMSE/√CRB for φ, θ, r, success and K_acc), ``rmse_vs_snr.png``,
``rmse_vs_range.png`` and ``success_vs_snr.png``.

√CRB in a bin is the RMS of the per-source CRB standard deviations over the bin's matched
true sources (the same sources that enter the RMSE). Sources whose CRB is infinite
(singular Fisher matrix) are left out of that RMS and counted in ``crb_num_singular``.
The B3 curve in the plots and the ``crb`` section use all valid true sources of the bin.
The ``crb`` section also gives ``success_at_crb`` per bin: the success rate an efficient
estimator would reach with the true K (:func:`ris_dist.crb.success_at_crb`), drawn as the
B3 line of ``success_vs_snr.png``.
Every method's wall time is reported in total (``seconds``) and per scene (``seconds_per_scene``);
``b4`` and ``b4_oracle_k`` share B4's search on a batch, so the first of them listed carries its time.
With ``b1`` or ``b4`` among the methods, ``paired[reference]`` compares every other method but
B2 with it scene by scene (both / only one succeeds, exact McNemar p), overall and per SNR bin;
``paired_k_correct[reference]`` does the same for K̂ = K (the scenes behind K_acc).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .config import ConfigError, SystemConfig, load_system
from .crb import crb, success_at_crb
from .localize.estimates import Estimates
from .metrics import PerScene, aggregate, assign_bins, bin_index, check_edges, default_edges, per_scene
from .physics import SceneBatch
from .report import PARAMS, write_outputs

log = logging.getLogger(__name__)

EXIT_USER_ERROR = 2

MethodFn = Callable[[SceneBatch, SystemConfig], Estimates]


class EvaluateError(Exception):
    """A user error in evaluation input (missing test set, unknown method, bad option). One line."""


def music_b1(batch: SceneBatch, system: SystemConfig) -> Estimates:
    """B1: MUSIC on R_samp, K̂ from MDL."""
    from .localize import localize  # imported late: localize is heavier and optional for metrics-only use

    return localize(batch.R_samp, system, num_sources=None, method="coarse_to_fine", order_method="mdl")


def music_b2(batch: SceneBatch, system: SystemConfig) -> Estimates:
    """B2: oracle MUSIC on R_true with the true K."""
    from .localize import localize

    return localize(batch.R_true, system, num_sources=batch.num_sources, method="coarse_to_fine",
                    order_method="mdl")


def b4_methods(config: Any = None) -> dict[str, MethodFn]:
    """``b4`` (K̂ from the ML order rule) and ``b4_oracle_k`` (the true K) with one
    :class:`ris_dist.localize.MLConfig` (default: its defaults).

    The two share B4's fits of the last batch: the oracle picks among the same k-source fits that
    the order rule chooses from. Whichever runs first on a batch pays for the search (its time
    per scene is B4's cost); the other reuses it.
    """
    shared: dict[str, Any] = {"batch": None, "fits": []}

    def fits_for(batch: SceneBatch, system: SystemConfig, max_sources: int) -> list[Any]:
        from .localize.ml import ml_fit_batch  # imported late, as in music_b1

        if batch is not shared["batch"] or len(shared["fits"]) < max_sources:
            shared["batch"] = None  # a failed fit must not leave the previous batch's fits behind
            shared["fits"] = ml_fit_batch(batch.y, batch.H, batch.codes, batch.snr_db, system, max_sources, config)
            shared["batch"] = batch
        return shared["fits"]

    def own_k(batch: SceneBatch, system: SystemConfig) -> Estimates:
        from .localize import ml_localize

        fits = fits_for(batch, system, system.max_sources)
        return ml_localize(batch.y, batch.H, batch.codes, batch.snr_db, system, config=config, fits=fits)

    def oracle_k(batch: SceneBatch, system: SystemConfig) -> Estimates:
        from .localize import ml_localize

        fits = fits_for(batch, system, int(batch.num_sources.max()))
        return ml_localize(batch.y, batch.H, batch.codes, batch.snr_db, system, num_sources=batch.num_sources,
                           config=config, fits=fits)

    return {"b4": own_k, "b4_oracle_k": oracle_k}


METHODS: dict[str, MethodFn] = {"b1": music_b1, "b2": music_b2}
"""Registry of evaluation methods that need nothing but the batch (name → fn(batch, system)),
run by default."""

ON_REQUEST: dict[str, MethodFn] = b4_methods()
"""Methods that need nothing but the batch and run only when named (B4 costs ~10²× B1's time)."""

MODEL_METHODS = ("model", "model_map_k", "model_oracle_k")
"""The learned model with its own K̂, with the K head's argmax and with the true K; they need
``--checkpoint``."""

MODEL_ON_REQUEST = ("model+ml", "model+ml_k")
"""The learned pipeline refined on the ML likelihood, with the K head's K̂ (``model+ml``) or K̂
from the likelihood with the head as prior (``model+ml_k``); need ``--checkpoint`` and run only
when named."""

ML_REFINE_ITERATIONS = 4
"""Likelihood refinement iterations of ``model+ml`` and ``model+ml_k`` (per source count)."""


def model_methods(localizer: Any) -> dict[str, MethodFn]:
    """``model``, ``model_map_k`` and ``model_oracle_k`` for a :class:`ris_dist.inference.Localizer`."""

    def own_k(batch: SceneBatch, system: SystemConfig) -> Estimates:
        return localizer(batch.y, batch.H, batch.codes, batch.snr_db)

    def map_k(batch: SceneBatch, system: SystemConfig) -> Estimates:
        return localizer(batch.y, batch.H, batch.codes, batch.snr_db, k_decision="map")

    def oracle_k(batch: SceneBatch, system: SystemConfig) -> Estimates:
        return localizer(batch.y, batch.H, batch.codes, batch.snr_db, num_sources=batch.num_sources)

    def refined(batch: SceneBatch, system: SystemConfig) -> Estimates:
        return localizer(batch.y, batch.H, batch.codes, batch.snr_db, refine="ml",
                         refine_iterations=ML_REFINE_ITERATIONS)

    def selected(batch: SceneBatch, system: SystemConfig) -> Estimates:
        return localizer(batch.y, batch.H, batch.codes, batch.snr_db, refine="ml_k",
                         refine_iterations=ML_REFINE_ITERATIONS)

    return {"model": own_k, "model_map_k": map_k, "model_oracle_k": oracle_k, "model+ml": refined,
            "model+ml_k": selected}


def parse_methods(specs: Sequence[str] | None, extra: Sequence[str] = (),
                  extra_on_request: Sequence[str] = ()) -> list[str]:
    """``["b1", "b2,b1"]`` → ``["b1", "b2"]`` (order kept, duplicates dropped); default the
    :data:`METHODS` registry plus ``extra``.

    ``extra`` (e.g. :data:`MODEL_METHODS` when a checkpoint is given) joins the default;
    :data:`ON_REQUEST` and ``extra_on_request`` (e.g. :data:`MODEL_ON_REQUEST`) are known but run
    only when named. A model method without a checkpoint is a user error.
    """
    default = [*METHODS, *extra]
    if not specs:
        return default
    known = [*default, *ON_REQUEST, *extra_on_request]
    names: list[str] = []
    for spec in specs:
        for name in (part.strip().lower() for part in spec.split(",")):
            if not name:
                continue
            if name in (*MODEL_METHODS, *MODEL_ON_REQUEST) and name not in known:
                raise EvaluateError(f"method {name!r} needs --checkpoint RUN/phaseN/best")
            if name not in known:
                raise EvaluateError(f"unknown method {name!r} (known: {', '.join(known)})")
            if name not in names:
                names.append(name)
    if not names:
        raise EvaluateError("no method given")
    return names


def _resolve(methods: Sequence[str] | Mapping[str, MethodFn]) -> dict[str, MethodFn]:
    if isinstance(methods, Mapping):
        return dict(methods)
    return {name: {**METHODS, **ON_REQUEST}[name] for name in parse_methods(list(methods))}


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x ** 2))) if x.size else math.nan


def _crb_stats(crb_rows: np.ndarray) -> dict[str, float]:
    """RMS of CRB std per parameter over rows ``[S, 3]``, finite ones only; count the rest."""
    finite = np.isfinite(crb_rows).all(-1)
    out: dict[str, float] = {"crb_num_sources": int(crb_rows.shape[0]), "crb_num_singular": int((~finite).sum())}
    for a, (key, _, _) in enumerate(PARAMS):
        out[f"crb_{key}"] = _rms(crb_rows[finite, a])
    return out


def _with_crb(metrics: dict[str, Any], pair_crb: np.ndarray) -> dict[str, Any]:
    """Add √CRB over the matched true sources and RMSE/√CRB per parameter."""
    metrics.update(_crb_stats(pair_crb))
    for key, _, _ in PARAMS:
        rmse, bound = metrics[f"rmse_{key}"], metrics[f"crb_{key}"]
        metrics[f"ratio_{key}"] = rmse / bound if bound > 0 else math.nan
    return metrics


def _tables(ps: PerScene, pair_crb: np.ndarray, system: SystemConfig, by: str,
            edges: np.ndarray) -> list[dict[str, Any]]:
    scene_bin, pair_bin = assign_bins(ps, by, edges)
    rows = []
    for i in range(edges.size - 1):
        row: dict[str, Any] = {"by": by, "lo": float(edges[i]), "hi": float(edges[i + 1])}
        row.update(aggregate(ps, system, scene_mask=scene_bin == i, pair_mask=pair_bin == i))
        rows.append(_with_crb(row, pair_crb[pair_bin == i]))
    return rows


def _crb_tables(std: np.ndarray, snr: np.ndarray, rng_m: np.ndarray, scene_p: np.ndarray,
                scene_snr: np.ndarray, scene_range: np.ndarray, snr_edges: np.ndarray,
                range_edges: np.ndarray) -> dict[str, Any]:
    """B3 summary: √CRB over all valid true sources (``std [S, 3]``, each source's scene SNR and
    true range) and ``success_at_crb``, the mean of the per-scene ``scene_p`` (scenes binned by
    SNR and by mean true range, as the methods' success is)."""

    def stats(source_rows: np.ndarray, scene_rows: np.ndarray) -> dict[str, Any]:
        p = scene_p[scene_rows]
        return {**_crb_stats(std[source_rows]), "num_scenes": int(p.size),
                "success_at_crb": float(p.mean()) if p.size else math.nan}

    out: dict[str, Any] = {"overall": stats(np.ones(len(std), bool), np.ones(len(scene_p), bool)),
                           "by_snr": [], "by_range": []}
    for key, values, scene_values, edges in (("by_snr", snr, scene_snr, snr_edges),
                                             ("by_range", rng_m, scene_range, range_edges)):
        b, sb = bin_index(values, edges), bin_index(scene_values, edges)
        for i in range(edges.size - 1):
            out[key].append({"lo": float(edges[i]), "hi": float(edges[i + 1]), **stats(b == i, sb == i)})
    return out


PAIRED_REFERENCES = ("b1", "b4")
"""The methods every other one (but B2, the oracle) is compared with scene by scene, each when
it is among the evaluated methods."""


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Scene-paired success counts of methods a and b with the exact two-sided McNemar p-value
    (a binomial test on the discordant scenes; 1 when there are none)."""
    from scipy.stats import binomtest

    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"num_scenes": int(a.size), "both": int((a & b).sum()), "only_method": only_a,
            "only_reference": only_b, "p_value": float(p)}


def _success(ps: PerScene) -> np.ndarray:
    return ps.success


def _k_correct(ps: PerScene) -> np.ndarray:
    return ps.k_hat == ps.k_true


def _paired_tables(per_method: Mapping[str, PerScene], snr_edges: np.ndarray,
                   outcome: Callable[[PerScene], np.ndarray] = _success) -> dict[str, Any]:
    """``{reference: {method: ...}}``: a per-scene ``outcome`` (success, or K̂ = K) of each method vs
    each of :data:`PAIRED_REFERENCES` that was evaluated, on the same scenes, overall and per SNR
    bin: the differences of a small test set are often a few scenes, and the p-value says whether
    they are more than chance."""
    return {ref: _paired_with(per_method, ref, snr_edges, outcome) for ref in PAIRED_REFERENCES if ref in per_method}


def _paired_with(per_method: Mapping[str, PerScene], reference: str, snr_edges: np.ndarray,
                 outcome: Callable[[PerScene], np.ndarray]) -> dict[str, Any]:
    ref = outcome(per_method[reference])
    out: dict[str, Any] = {}
    for name, ps in per_method.items():
        if name in (reference, "b2"):
            continue
        b = bin_index(ps.snr_db, snr_edges)
        hit = outcome(ps)
        out[name] = {"overall": _paired(hit, ref),
                     "by_snr": [{"lo": float(snr_edges[i]), "hi": float(snr_edges[i + 1]),
                                 **_paired(hit[b == i], ref[b == i])}
                                for i in range(snr_edges.size - 1)]}
    return out


def evaluate_methods(batches: Iterable[SceneBatch], system: SystemConfig,
                     methods: Sequence[str] | Mapping[str, MethodFn], out_dir: str | Path | None,
                     snr_edges: Sequence[float] | None = None,
                     range_edges: Sequence[float] | None = None) -> dict[str, Any]:
    """Run every method on every batch, score against truth and the CRB, write the report.

    ``methods`` are registry names or a name → function mapping. With ``out_dir`` None
    nothing is written. Returns the ``results.json`` content (with NaN, not null).
    """
    fns = _resolve(methods)
    snr_e = default_edges("snr_db", system) if snr_edges is None else check_edges(snr_edges)
    rng_e = default_edges("range_m", system) if range_edges is None else check_edges(range_edges)
    parts: dict[str, list[PerScene]] = {name: [] for name in fns}
    pair_crb: dict[str, list[np.ndarray]] = {name: [] for name in fns}
    seconds = {name: 0.0 for name in fns}
    all_crb, all_snr, all_range = [], [], []
    scene_p, scene_snr, scene_range = [], [], []
    num_scenes = 0
    for batch in batches:
        std_t = crb(batch, system)  # [B, K_max, 3]
        std = std_t.cpu().numpy()
        valid = batch.valid.cpu().numpy()
        all_crb.append(std[valid])
        all_snr.append(np.broadcast_to(batch.snr_db.cpu().numpy()[:, None], valid.shape)[valid])
        all_range.append(batch.range_m.cpu().numpy()[valid])
        scene_p.append(success_at_crb(std_t, batch.valid, batch.range_m, system).cpu().numpy())
        scene_snr.append(batch.snr_db.cpu().numpy())
        with np.errstate(invalid="ignore"):  # a scene without sources has no mean range (NaN: no bin)
            scene_range.append(np.where(valid, batch.range_m.cpu().numpy(), 0.0).sum(1) / valid.sum(1))
        for name, fn in fns.items():
            t0 = time.perf_counter()
            est = fn(batch, system)
            seconds[name] += time.perf_counter() - t0
            ps = per_scene(est, batch, system)
            parts[name].append(ps)
            pair_crb[name].append(std[ps.pair_scene, ps.pair_true_slot])
        num_scenes += len(batch)
        log.info("evaluated %d scenes", num_scenes)
    if num_scenes == 0:
        raise EvaluateError("the test set holds no scenes")

    results: dict[str, Any] = {
        "system": system.name, "num_scenes": num_scenes,
        "snr_edges_db": snr_e.tolist(), "range_edges_m": rng_e.tolist(), "methods": {},
        "crb": _crb_tables(np.concatenate(all_crb), np.concatenate(all_snr), np.concatenate(all_range),
                           np.concatenate(scene_p), np.concatenate(scene_snr), np.concatenate(scene_range),
                           snr_e, rng_e),
    }
    per_method = {name: PerScene.cat(parts[name]) for name in fns}
    for name, ps in per_method.items():
        pc = np.concatenate(pair_crb[name])
        results["methods"][name] = {
            "seconds": seconds[name],
            "seconds_per_scene": seconds[name] / num_scenes,
            "overall": _with_crb(aggregate(ps, system), pc),
            "by_snr": _tables(ps, pc, system, "snr_db", snr_e),
            "by_range": _tables(ps, pc, system, "range_m", rng_e),
        }
    results["paired"] = _paired_tables(per_method, snr_e)
    results["paired_k_correct"] = _paired_tables(per_method, snr_e, _k_correct)
    if out_dir is not None:
        write_outputs(results, Path(out_dir))
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ris_dist.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--system", default=None,
                   help="system config name or YAML; must match the test set's (default: the test set's)")
    p.add_argument("--test-set", required=True, help="frozen split folder (python -m ris_dist.data generate)")
    p.add_argument("--checkpoint", default=None,
                   help="a run's best/ folder (RUN/phaseN/best); adds the methods " + ", ".join(MODEL_METHODS)
                        + " (and, when named, " + ", ".join(MODEL_ON_REQUEST) + ")")
    known = [*METHODS, *ON_REQUEST, *MODEL_METHODS, *MODEL_ON_REQUEST]
    p.add_argument("--method", action="append", default=None,
                   help=f"method(s), repeatable or comma-separated (known: {', '.join(known)}; default all "
                        f"available but {', '.join([*ON_REQUEST, *MODEL_ON_REQUEST])})")
    p.add_argument("--out", default=None, help="output folder (default reports/<system>-<timestamp>)")
    p.add_argument("--beta", type=float, default=None,
                   help="β of the R_eff that MUSIC searches for the model methods (default: the checkpoint's, "
                        "i.e. the β its run validated with); for sweeps on a dev split, not on the test set")
    p.add_argument("--batch-size", type=int, default=256, help="scenes per batch")
    p.add_argument("--ml-grid-spacing", type=float, default=None,
                   help="B4's search grid step in resolution cells (default: MLConfig's, 0.3)")
    p.add_argument("--ml-ap-cycles", type=int, default=None,
                   help="B4's alternating-projection rounds per source count (default: MLConfig's, 1)")
    p.add_argument("--ml-k-penalty", type=float, default=None,
                   help="model+ml_k: multiplier of the BIC penalty (default: SelectConfig's, 1); for dev-split sweeps")
    p.add_argument("--ml-k-prior-weight", type=float, default=None,
                   help="model+ml_k: weight of the K head's log-probabilities (default 1; 0 = plain BIC)")
    p.add_argument("--ml-k-extra-starts", type=int, default=None,
                   help="model+ml_k: MUSIC runner-up peaks scored as starts beyond k (default 2)")
    p.add_argument("--ml-k-grid-start-below-db", type=float, default=None,
                   help="model+ml_k: scenes below this SNR (dB) also start every k from B4's sequential grid "
                        "search (default: SelectConfig's, 10; -inf: never; inf: always)")
    p.add_argument("--device", default=None, help="torch device for the methods and the CRB (default cpu)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return p


def _select_config(args: argparse.Namespace) -> Any:
    from .localize.ml_select import SelectConfig

    knobs = {"order_penalty": args.ml_k_penalty, "prior_weight": args.ml_k_prior_weight,
             "extra_starts": args.ml_k_extra_starts, "grid_start_below_db": args.ml_k_grid_start_below_db}
    try:
        return SelectConfig(**{k: v for k, v in knobs.items() if v is not None})
    except ValueError as err:
        raise EvaluateError(f"--ml-k-*: {err}") from None


def _run(args: argparse.Namespace) -> list[Path]:
    from .data import load_split

    methods = parse_methods(args.method, extra=MODEL_METHODS if args.checkpoint else (),
                            extra_on_request=MODEL_ON_REQUEST if args.checkpoint else ())
    if args.batch_size < 1:
        raise EvaluateError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.beta is not None and not (args.checkpoint and 0.0 <= args.beta <= 1.0):
        raise EvaluateError(f"--beta {args.beta}: needs --checkpoint and a value in [0, 1]")
    select_knobs = [args.ml_k_penalty, args.ml_k_prior_weight, args.ml_k_extra_starts, args.ml_k_grid_start_below_db]
    if any(v is not None for v in select_knobs) and "model+ml_k" not in methods:
        raise EvaluateError("--ml-k-*: only model+ml_k uses them; name it with --method (and give --checkpoint)")
    test_dir = Path(args.test_set)
    if not test_dir.is_dir():
        raise EvaluateError(f"--test-set {test_dir}: no such directory")
    batch_methods = {**METHODS, **ON_REQUEST}
    if args.ml_grid_spacing is not None or args.ml_ap_cycles is not None:
        from .localize.ml import MLConfig

        knobs = {"grid_spacing_cells": args.ml_grid_spacing, "ap_cycles": args.ml_ap_cycles}
        try:
            config = MLConfig(**{k: v for k, v in knobs.items() if v is not None})
        except ValueError as err:
            raise EvaluateError(f"--ml-*: {err}") from None
        batch_methods.update(b4_methods(config))
    fns: dict[str, MethodFn] = {name: batch_methods[name] for name in methods if name in batch_methods}
    split = load_split(test_dir)
    system = split.system
    if args.checkpoint:
        from .inference import Localizer  # torch model code only when a model is evaluated

        localizer = Localizer.from_checkpoint(args.checkpoint, device=args.device, expect_system=system)
        if args.beta is not None:
            localizer.beta = args.beta
        localizer.select = _select_config(args)
        if not args.method and (localizer.k_source != "head" or localizer.k_decision == "map"):
            methods.remove("model_map_k")  # by default only when it differs from ``model``
        fns.update({name: fn for name, fn in model_methods(localizer).items() if name in methods})
    if args.system is not None:
        wanted = load_system(args.system)
        if wanted != system:
            raise EvaluateError(f"--system {args.system!r} differs from the system the test set {test_dir} "
                                f"was generated with ({system.name!r})")
    out = Path(args.out) if args.out else Path("reports") / f"{system.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise EvaluateError(f"--out {out}: exists and is not a directory")
    fns = {name: fns[name] for name in methods}  # the order the user asked for
    results = evaluate_methods(split.batches(args.batch_size, device=args.device), system, fns, out_dir=None)
    if args.checkpoint:
        results["model"] = {"checkpoint": str(args.checkpoint), "beta": localizer.beta,
                            "k_source": localizer.k_source, "k_decision": localizer.k_decision}
    return write_outputs(results, out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from .data import DataError
    from .train.checkpoint import CheckpointError

    try:
        paths = _run(args)
    except (EvaluateError, DataError, ConfigError, CheckpointError) as err:
        # Expected user-facing failures: one line, exit 2. Anything else is a bug and propagates.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
