"""The evaluation report: ``results.json``, ``report.md`` and the PNG plots of one evaluation.

Rendering only; :mod:`ris_dist.evaluate` computes every figure. NaN is written as ``null``
and ±∞ as the strings ``"inf"``/``"-inf"`` so the JSON stays strict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

PARAMS = (("az_deg", "φ", "deg"), ("el_deg", "θ", "deg"), ("range_m", "r", "m"))


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def markdown_report(results: dict[str, Any]) -> str:
    """The ``report.md`` text: per method, a table over SNR bins and one over range bins,
    each with the overall row."""
    head = ["scenes", "K_acc", "success"]
    for key, sym, unit in PARAMS:
        head += [f"RMSE {sym} ({unit})", f"RMSE/√CRB {sym}"]
    head.append("k_loc")
    lines = [f"# Evaluation: system `{results['system']}`, {results['num_scenes']} scenes", "",
             "√CRB: RMS of the per-source CRB std over the matched true sources of the row "
             "(stochastic CRB, known powers and noise).", ""]
    if "model" in results:
        m = results["model"]
        rule = m.get("k_decision", "map") if m["k_source"] == "head" else None
        how = {None: "", "map": " by its argmax",
               "success": " by the expected-success rule (`model_map_k`: by its argmax)"}[rule]
        lines += [f"Model: `{m['checkpoint']}`; MUSIC searches R_eff with β = {m['beta']:g}; "
                  f"K̂ from `{m['k_source']}`{how}.", ""]

    def row(label: str, m: dict[str, Any]) -> str:
        cells = [label, str(m["num_scenes"]), _fmt(m["K_acc"]), _fmt(m["success"])]
        for key, _, _ in PARAMS:
            cells += [_fmt(m[f"rmse_{key}"]), _fmt(m[f"ratio_{key}"])]
        cells.append(_fmt(m["k_loc"]))
        return "| " + " | ".join(cells) + " |"

    for name, res in results["methods"].items():
        lines += [f"## Method `{name}` ({res['seconds']:.1f} s, {res['seconds_per_scene']:.3g} s per scene)", ""]
        # Range rows bin matched pairs by true range (errors) and scenes by mean true range (counts).
        for table, label in (("by_snr", "SNR (dB)"), ("by_range", "range (m)")):
            lines += ["| " + " | ".join([label, *head]) + " |", "|" + "---|" * (len(head) + 1)]
            lines += [row(f"[{m['lo']:g}, {m['hi']:g})", m) for m in res[table]]
            lines += [row("**all**", res["overall"]), ""]
    c = results["crb"]["overall"]
    lines += ["## B3: CRB over all true sources", "",
              f"RMS √CRB: φ {_fmt(c['crb_az_deg'])}°, θ {_fmt(c['crb_el_deg'])}°, r {_fmt(c['crb_range_m'])} m "
              f"over {c['crb_num_sources']} sources ({c['crb_num_singular']} singular, left out).", "",
              "Success at the CRB: the success rate of an efficient estimator with the true K (Gaussian "
              "errors with the CRB standard deviations; `ris_dist.crb.success_at_crb`). A reference "
              "for the distance to the physical limit, not a bound.", ""]
    for table, label in (("by_snr", "SNR (dB)"), ("by_range", "range (m)")):
        lines += [f"| {label} | scenes | success at the CRB |", "|---|---|---|"]
        lines += [f"| [{m['lo']:g}, {m['hi']:g}) | {m['num_scenes']} | {_fmt(m['success_at_crb'])} |"
                  for m in results["crb"][table]]
        lines += [f"| **all** | {c['num_scenes']} | {_fmt(c['success_at_crb'])} |", ""]
    for key, what, hit in (("paired", "success", "succeeds"), ("paired_k_correct", "K̂ = K", "has K̂ = K")):
        for reference, paired in results[key].items():
            lines += [f"## Paired {what} vs `{reference}`", "",
                      f"Scenes where only the method {hit}, only the reference does, or both; p is the exact "
                      "two-sided McNemar test on the discordant scenes (small p: the difference is not chance).", "",
                      "| method | SNR (dB) | scenes | both | only method | only reference | p |",
                      "|---|---|---|---|---|---|---|"]
            for name, res in paired.items():
                for label, m in [*((f"[{m['lo']:g}, {m['hi']:g})", m) for m in res["by_snr"]),
                                 ("**all**", res["overall"])]:
                    lines.append(f"| {name} | {label} | {m['num_scenes']} | {m['both']} | {m['only_method']} | "
                                 f"{m['only_reference']} | {_fmt(m['p_value'], 2)} |")
            lines.append("")
    return "\n".join(lines)


def _plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on CI or compute nodes
    import matplotlib.pyplot as plt

    paths = []
    for table, xlabel, stem in (("by_snr", "SNR (dB)", "snr"), ("by_range", "range (m)", "range")):
        c = [(r["lo"] + r["hi"]) / 2 for r in results["crb"][table]]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, (key, sym, unit) in zip(axes, PARAMS):
            for name, res in results["methods"].items():
                ax.semilogy(c, [r[f"rmse_{key}"] for r in res[table]], "o-", label=f"{name} RMSE")
            ax.semilogy(c, [r[f"crb_{key}"] for r in results["crb"][table]], "k--", label="√CRB (B3)")
            ax.set(xlabel=xlabel, ylabel=f"{sym} ({unit})", title=f"RMSE {sym} vs {xlabel.split()[0]}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        paths.append(out_dir / f"rmse_vs_{stem}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    centers = [(r["lo"] + r["hi"]) / 2 for r in results["crb"]["by_snr"]]

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, (name, res) in enumerate(results["methods"].items()):
        ax.plot(centers, [r["success"] for r in res["by_snr"]], "o-", color=f"C{i}", label=f"{name} success")
        ax.plot(centers, [r["K_acc"] for r in res["by_snr"]], "x:", color=f"C{i}", label=f"{name} K_acc")
    ax.plot(centers, [r["success_at_crb"] for r in results["crb"]["by_snr"]], "k--",
            label="success at the CRB (B3)")
    ax.set(xlabel="SNR (dB)", ylabel="fraction of scenes", ylim=(-0.02, 1.02), title="Success vs SNR")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")  # outside: curves fill the axes
    fig.tight_layout()
    paths.append(out_dir / "success_vs_snr.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def write_outputs(results: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write results.json, report.md and the PNG plots into ``out_dir``; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    res_path = out_dir / "results.json"
    res_path.write_text(json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    md_path = out_dir / "report.md"
    md_path.write_text(markdown_report(results))
    return [res_path, md_path, *_plots(results, out_dir)]
