"""Reading the acceptance run's training runs back (logs, metrics.jsonl, gate.json) and summary.md."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any


def _records(run_dir: Path, kind: str) -> dict[int, dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    out: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["kind"] == kind:
                out[record["step"]] = record
    return out


def gate_run_result(log: str, run_dir: Path, inject_steps: tuple[int, ...], world: int) -> dict[str, Any]:
    """What one injected run shows: per-rank skips and digests, and whether the ranks agreed."""
    skips: dict[int, list[list[Any]]] = {}
    for rank, step, reason in re.findall(r"\[SKIP\] rank=(\d+) step=(\d+) reason=(\w+)", log):
        skips.setdefault(int(rank), []).append([int(step), reason])
    digests = {int(r): d for r, d in re.findall(r"\[DIGEST\] rank=(\d+) step=\d+ sha256=(\w+)", log)}
    group = re.search(r"process_group=(\w+)", log)
    params = re.search(r"\[AMP\] dtype=\w+ params=(\S+)", log)
    train = _records(run_dir, "train")
    stepped_off = [s for s, r in sorted(train.items()) if not r["stepped"]]
    rank0 = [s for s, _ in skips.get(0, [])]
    result: dict[str, Any] = {
        "process_group": group.group(1) if group else None,
        "param_dtype": params.group(1) if params else None,
        "skips_per_rank": {str(r): v for r, v in sorted(skips.items())},
        "skip_steps": rank0,
        "skip_count": len(rank0),
        "skips_at_injected": set(inject_steps) <= set(rank0),
        "extra_skips": sorted(set(rank0) - set(inject_steps)),
        # Every rank logged the same skips, and they are the steps the metrics record as not stepped.
        "gates_agree": len(skips) in (0, world) and all(v == skips.get(0) for v in skips.values())
        and rank0 == stepped_off,
        "digests": {str(r): d for r, d in sorted(digests.items())},
        "digests_agree": len(digests) == world and len(set(digests.values())) == 1,
        "steps": max(train, default=0),
    }
    losses = _records(run_dir, "loss")
    if losses:
        result["final_loss"] = losses[max(losses)]["total"]
    scales = {s: r["loss_scale"] for s, r in sorted(train.items()) if r.get("loss_scale") is not None}
    if any(v != 1.0 for v in scales.values()):  # a real loss scaler (fp16), not DeepSpeed's fixed 1.0
        result["loss_scale_trace"] = scales
        result["loss_scale_fell"] = all(s - 1 in scales and s in scales and scales[s] < scales[s - 1]
                                        for s in inject_steps)
    return result


def phase_result(run_dir: Path) -> dict[str, Any]:
    """Losses, validations and the gate of one curriculum phase."""
    losses = {s: r["total"] for s, r in sorted(_records(run_dir, "loss").items())}
    vals = {s: {k: v for k, v in r.items() if k not in ("kind", "step", "time")}
            for s, r in sorted(_records(run_dir, "val").items())}
    out: dict[str, Any] = {"losses": losses, "validations": vals}
    if losses:
        out["first_loss"], out["last_loss"] = losses[min(losses)], losses[max(losses)]
    if vals:
        out["last_val"] = vals[max(vals)]
    gate = run_dir / "gate.json"
    if gate.is_file():
        data = json.loads(gate.read_text())
        out["gate"] = {"passed": data["passed"],
                       "criteria": {c["name"]: {"value": c["value"], "passed": c["passed"]} for c in data["criteria"]}}
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    env = summary["environment"]
    lines = [f"# GPU acceptance run ({summary['mode']})", "",
             f"{env.get('gpu', 'CPU')}, torch {env['torch']}, accelerate {env.get('accelerate')}, "
             f"deepspeed {env.get('deepspeed')}; {summary.get('elapsed_s')} s of a {summary['budget_s']:.0f} s budget.",
             "", "| stage | status | wall s | note |", "|---|---|---|---|"]
    for name, stage in summary["stages"].items():
        lines.append(f"| {name} | {stage['status']} | {stage.get('wall_s')} | {stage.get('error', '')} |")
    gates = summary["stages"].get("gates", {})
    if gates.get("runs"):
        lines += ["", f"## Gates (world size {gates.get('world_size')})", "",
                  "| system | backend | amp | group | params | skips | agree | digests agree | loss scale fell |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in gates["runs"]:
            if "returncode" not in r:
                lines.append(f"| {r['system']} | {r['backend']} | {r['amp']} | {r['status']} | | | | | |")
                continue
            lines.append(f"| {r['system']} | {r['backend']} | {r['amp']} | {r.get('process_group')} | "
                         f"{r.get('param_dtype')} | {r.get('skip_steps')} | {r.get('gates_agree')} | "
                         f"{r.get('digests_agree')} | {r.get('loss_scale_fell', '-')} |")
    rows = summary["stages"].get("throughput", {}).get("rows", [])
    if rows:
        lines += ["", "## Throughput", "", "| batch | amp | scenes/s | simulate s | fwd+bwd s | gate+step s | peak MiB |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['batch']} | {r['amp']} | {_fmt(r.get('scenes_per_s', r.get('error')))} | "
                         f"{_fmt(r.get('simulate_s', ''))} | {_fmt(r.get('forward_backward_s', ''))} | "
                         f"{_fmt(r.get('gate_step_s', ''))} | {_fmt(r.get('peak_mem_mb', '-'))} |")
    val = summary["stages"].get("validation", {})
    if "seconds" in val and "scenes" in val:
        lines += ["", f"## Validation: {val['scenes']} {val['system']} scenes with MUSIC (K̂ from the head, "
                      f"K_max={val['k_max']}) in {val['seconds']:.1f} s ({val['scenes_per_s']:.0f} scenes/s)"]
    for phase, r in summary["stages"].get("curriculum", {}).get("phases", {}).items():
        lines += ["", f"## {phase} ({r['config']}, max_steps={r['max_steps']}, {r['seconds']} s)", "",
                  f"loss {_fmt(r.get('first_loss'))} -> {_fmt(r.get('last_loss'))}; last validation: "
                  + ", ".join(f"{k}={_fmt(v)}" for k, v in (r.get("last_val") or {}).items()),
                  f"gate: {r.get('gate', {}).get('passed')}"]
    path.write_text("\n".join(lines) + "\n")
