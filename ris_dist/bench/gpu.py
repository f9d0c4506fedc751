"""The GPU acceptance run: gates under every backend, throughput, validation time, a short curriculum.

``python -m ris_dist.bench gpu --out DIR [--budget-s S] [--smoke]`` writes ``DIR/summary.json``
and ``DIR/summary.md``. Every stage gets a share of the budget (what an earlier stage leaves
unused rolls over), runs in subprocesses with timeouts, and is recorded as ``ok``, ``failed``
(with its error line) or ``skipped``; a failed stage never stops the next one.

Stages:
1. ``gates``: phase-0 steps through ``accelerate launch`` for DDP, DeepSpeed ZeRO-2 with bf16 and
   ZeRO-3 with fp16, with non-finite gradients injected at fixed steps: skips per rank, the
   ``[DIGEST]`` of the final weights per rank, the fp16 loss-scale trace.
2. ``throughput``: full-system training steps split into simulate / forward+backward / gate+step,
   scenes/s and peak GPU memory at several global batch sizes.
3. ``validation``: the time to validate scenes with MUSIC (K̂ from the K head).
4. ``curriculum``: phase 0 then phase 1 of the full system with the full preset, bounded by
   ``max_steps`` sized from the measured step time; losses, validations and gates.

``--smoke`` runs the same stages on CPU at tiny sizes (2 gloo processes; fp16 under DeepSpeed
needs CUDA and is recorded as skipped).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .gpu_report import gate_run_result, phase_result, write_markdown
from .procs import REPO, run_all

log = logging.getLogger("ris_dist.bench.gpu")

#: Budget shares; a stage gets its share of what is left, so unused time rolls over.
SHARES = {"gates": 0.30, "throughput": 0.14, "validation": 0.12, "curriculum": 0.44}
FP16_CPU = "skipped: fp16 needs CUDA under DeepSpeed"


@dataclass(frozen=True)
class Plan:
    """Sizes of one acceptance run (GPU or CPU smoke)."""

    smoke: bool
    gate_systems: tuple[str, ...]
    gate_backends: tuple[tuple[str, str], ...]
    """(accelerate config under configs/accelerate, amp.dtype)."""
    world: int
    gate_steps: int
    inject_steps: tuple[int, ...]
    gate_batch: int
    parallel: int
    """Gate runs launched at once (a GPU has room for several small ones)."""
    throughput_system: str
    throughput_preset: str
    throughput_batches: tuple[int, ...]
    throughput_dtypes: tuple[str, ...]
    val_system: str
    val_preset: str
    val_scenes: int
    curriculum_system: str
    curriculum_preset: str
    curriculum_max_steps: int
    curriculum_val_scenes: int
    curriculum_launch: tuple[str, ...] = field(default=())

    @staticmethod
    def make(smoke: bool) -> "Plan":
        if smoke:
            return Plan(True, ("tiny",), (("cpu_ddp", "none"), ("deepspeed_zero2", "bf16"), ("deepspeed_zero3", "fp16")),
                        world=2, gate_steps=6, inject_steps=(3, 5), gate_batch=16, parallel=1,
                        throughput_system="tiny", throughput_preset="tiny", throughput_batches=(8, 32),
                        throughput_dtypes=("none",), val_system="tiny", val_preset="tiny", val_scenes=256,
                        curriculum_system="tiny", curriculum_preset="tiny", curriculum_max_steps=3,
                        curriculum_val_scenes=64)
        return Plan(False, ("tiny", "full"), (("ddp", "none"), ("deepspeed_zero2", "bf16"), ("deepspeed_zero3", "fp16")),
                    world=1, gate_steps=8, inject_steps=(3, 6), gate_batch=32, parallel=6,
                    throughput_system="full", throughput_preset="full", throughput_batches=(16, 64, 256),
                    throughput_dtypes=("none", "bf16"), val_system="full", val_preset="full", val_scenes=2048,
                    curriculum_system="full", curriculum_preset="full", curriculum_max_steps=400,
                    curriculum_val_scenes=512, curriculum_launch=("configs/accelerate/ddp.yaml",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="folder for summary.json, summary.md and the logs")
    parser.add_argument("--budget-s", type=float, default=400.0, help="wall-time cap for all stages together")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: check the script, not the GPU")
    parser.add_argument("--stages", nargs="+", default=list(SHARES), choices=list(SHARES))


def _python() -> list[str]:
    return [sys.executable]


def _launch(accelerate_config: str, world: int, port: int) -> list[str]:
    return [*_python(), "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
            "--num_processes", str(world), "--main_process_port", str(port), "-m", "ris_dist.train"]


# -- stages ----------------------------------------------------------------------------
def stage_gates(plan: Plan, out: Path, seconds: float, context: dict[str, Any]) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    inject_rank = plan.world - 1
    steps = ", ".join(map(str, plan.inject_steps))
    inject = f"debug.inject_nonfinite_grad={{ranks: [{inject_rank}], steps: [{steps}], value: inf}}"
    cmds, specs, runs = [], [], []
    for system in plan.gate_systems:
        for backend, amp in plan.gate_backends:
            name = f"{system}_{backend}_{amp}"
            spec = {"system": system, "backend": backend, "amp": amp, "world_size": plan.world,
                    "injected_steps": list(plan.inject_steps), "inject_rank": inject_rank}
            if amp == "fp16" and backend.startswith("deepspeed") and not cuda:
                runs.append({**spec, "status": FP16_CPU})
                continue
            overrides = [f"output_dir={out / 'gates'}", f"run_name={name}", "mode=standard", f"system={system}",
                         f"model.preset={system}", f"amp.dtype={amp}", f"max_steps={plan.gate_steps}",
                         f"data.train_scenes={plan.gate_batch * plan.gate_steps}", f"data.batch_size={plan.gate_batch}",
                         f"data.val_scenes={plan.gate_batch}", f"data.val_batch_size={plan.gate_batch}",
                         "log.every_steps=1", "log.progress_bar=false", "gate.enforce=false",
                         "checkpoint.every_steps=0", "checkpoint.resume=false", inject]
            cmd = _launch(f"configs/accelerate/{backend}.yaml", plan.world, 29600 + len(cmds)) + \
                ["--config", "configs/phase0.yaml", *overrides]
            (out / "gates").mkdir(parents=True, exist_ok=True)
            cmds.append((cmd, out / "gates" / f"{name}.log"))
            specs.append((spec, out / "gates" / name / "phase0"))
    for (spec, run_dir), proc in zip(specs, run_all(cmds, seconds, plan.parallel)):
        result = {**spec, **gate_run_result(proc.log, run_dir, plan.inject_steps, plan.world),
                  "returncode": proc.returncode, "seconds": round(proc.seconds, 1)}
        if proc.returncode != 0:
            result["error"] = proc.error_line()
        runs.append(result)
        log.warning("[GATES] %s/%s/%s rc=%d skips=%s agree=%s digests_agree=%s%s", spec["system"], spec["backend"],
                    spec["amp"], proc.returncode, result.get("skip_steps"), result.get("gates_agree"),
                    result.get("digests_agree"), f" scale_fell={result['loss_scale_fell']}"
                    if "loss_scale_fell" in result else "")
    ran = [r for r in runs if "returncode" in r]
    bad = [r for r in ran if not _gate_run_ok(r)]
    result = {"status": "ok" if ran and not bad else "failed", "world_size": plan.world,
              "all_gates_agree": all(r.get("gates_agree") for r in ran), "runs": runs}
    if bad or not ran:
        result["error"] = f"{bad[0]['system']}/{bad[0]['backend']}: {bad[0].get('error', 'checks failed')}" \
            if bad else "no run"
    return result


def _gate_run_ok(r: dict[str, Any]) -> bool:
    """Exit 0, agreeing ranks, the injected steps skipped, equal digests, and under fp16 a falling scale."""
    return (r["returncode"] == 0 and r.get("gates_agree") and r.get("skips_at_injected") and r.get("digests_agree")
            and r.get("loss_scale_fell", True))


def _worker(stage: str, out: Path, seconds: float, args: list[str]) -> dict[str, Any]:
    file = out / f"{stage}.json"
    cmd = [*_python(), "-m", "ris_dist.bench.gpu_stages", stage, "--out", str(file), *args]
    proc = run_all([(cmd, out / f"{stage}.log")], seconds, 1)[0]
    if proc.returncode != 0:
        return {"status": "failed", "error": proc.error_line(), "process_s": round(proc.seconds, 1)}
    return {"status": "ok", "process_s": round(proc.seconds, 1), **json.loads(file.read_text())}


def stage_throughput(plan: Plan, out: Path, seconds: float, context: dict[str, Any]) -> dict[str, Any]:
    # The worker's own timing loop gets most of the share; the rest is start-up and model build.
    result = _worker("throughput", out, seconds, [
        "--system", plan.throughput_system, "--preset", plan.throughput_preset,
        "--batches", *map(str, plan.throughput_batches), "--dtypes", *plan.throughput_dtypes,
        "--seconds", f"{max(5.0, 0.6 * seconds):.0f}", "--max-steps", "3" if plan.smoke else "20"])
    context["step_s"] = {row["batch"]: row["step_s"] for row in result.get("rows", [])
                         if row["amp"] == "none" and "step_s" in row}
    return result


def stage_validation(plan: Plan, out: Path, seconds: float, context: dict[str, Any]) -> dict[str, Any]:
    return _worker("validation", out, seconds, ["--system", plan.val_system, "--preset", plan.val_preset,
                                                "--scenes", str(plan.val_scenes), "--batch", "256"])


def _curriculum_steps(plan: Plan, seconds: float, batch: int, step_s: dict[int, float]) -> int:
    """As many steps as fit in a third of the phase's time at the measured step time (start-up takes the rest)."""
    if plan.smoke or not step_s:
        return plan.curriculum_max_steps if plan.smoke else 100
    nearest = min(step_s, key=lambda b: abs(b - batch))
    per_step = step_s[nearest] * batch / nearest
    return int(max(10, min(plan.curriculum_max_steps, seconds / 3 / per_step)))


def stage_curriculum(plan: Plan, out: Path, seconds: float, context: dict[str, Any]) -> dict[str, Any]:
    from ..train.config import load_train_config

    own = REPO / "configs" / "full"
    use_full_dir = plan.curriculum_system == "full" and (own / "phase0.yaml").is_file() and \
        (own / "phase1.yaml").is_file()
    phases, results, started = ("phase0", "phase1"), {}, time.monotonic()
    for i, phase in enumerate(phases):
        config = str((own if use_full_dir else REPO / "configs") / f"{phase}.yaml")
        base = [] if use_full_dir else [f"system={plan.curriculum_system}", f"model.preset={plan.curriculum_preset}"]
        batch = load_train_config(config, base).data.batch_size
        left = seconds - (time.monotonic() - started)
        share = left / (len(phases) - i)
        steps = _curriculum_steps(plan, share, batch, context.get("step_s", {}))
        overrides = [*base, f"output_dir={out / 'curriculum'}", "run_name=full", f"max_steps={steps}",
                     f"data.val_scenes={plan.curriculum_val_scenes}", "gate.enforce=false",
                     f"log.every_steps={max(1, steps // 20)}", "log.progress_bar=false", "checkpoint.every_steps=0",
                     "checkpoint.resume=false"]
        if plan.curriculum_launch:
            cmd = _launch(plan.curriculum_launch[0], 1, 29700 + i)
        else:
            cmd = [*_python(), "-m", "ris_dist.train"]
        (out / "curriculum").mkdir(parents=True, exist_ok=True)
        proc = run_all([(cmd + ["--config", config, *overrides], out / "curriculum" / f"{phase}.log")], share, 1)[0]
        run_dir = out / "curriculum" / "full" / phase
        results[phase] = {"config": os.path.relpath(config, REPO), "max_steps": steps, "returncode": proc.returncode,
                          "seconds": round(proc.seconds, 1), **phase_result(run_dir)}
        log.warning("[CURRICULUM] %s steps=%d rc=%d %.0f s last_loss=%s val=%s", phase, steps, proc.returncode,
                    proc.seconds, results[phase].get("last_loss"),
                    {k: round(v, 4) for k, v in (results[phase].get("last_val") or {}).items()
                     if k in ("nmse", "k_head_acc", "success")})
        if proc.returncode != 0:
            results[phase]["error"] = proc.error_line()
            return {"status": "failed", "error": f"{phase}: {results[phase]['error']}", "phases": results}
    return {"status": "ok", "phases": results}


STAGES: dict[str, Callable[[Plan, Path, float, dict[str, Any]], dict[str, Any]]] = {
    "gates": stage_gates, "throughput": stage_throughput, "validation": stage_validation,
    "curriculum": stage_curriculum}


def _environment() -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        env.update({"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
                    "cuda": torch.version.cuda})
    for name in ("accelerate", "deepspeed"):
        try:
            env[name] = __import__(name).__version__
        except ImportError as err:  # recorded: the DeepSpeed stages then fail with the same message
            env[name] = f"missing ({err})"
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.make(args.smoke)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    summary: dict[str, Any] = {"mode": "smoke" if plan.smoke else "gpu", "budget_s": args.budget_s,
                               "environment": _environment(), "stages": {}}
    log.warning("[GPU-CHECK] mode=%s budget=%.0f s out=%s %s", summary["mode"], args.budget_s, out,
                summary["environment"].get("gpu", "cpu"))
    context: dict[str, Any] = {}
    names = [n for n in SHARES if n in args.stages]
    for i, name in enumerate(names):
        left = args.budget_s - (time.monotonic() - t0)
        seconds = left * SHARES[name] / sum(SHARES[n] for n in names[i:])
        start = time.monotonic()
        if seconds < 5:
            result = {"status": "skipped", "error": "budget spent"}
        else:
            try:
                result = STAGES[name](plan, out, seconds, context)
            except Exception as err:  # recorded as the stage's failure; the next stage still runs
                result = {"status": "failed", "error": f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"}
        result = {**result, "budget_s": round(seconds, 1), "wall_s": round(time.monotonic() - start, 1)}
        summary["stages"][name] = result
        log.warning("[STAGE] %s %s in %.0f s (share %.0f s)%s", name, result["status"], result["wall_s"], seconds,
                    f": {result['error']}" if result.get("error") else "")
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    summary["elapsed_s"] = round(time.monotonic() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    write_markdown(summary, out / "summary.md")
    return {"summary": str(out / "summary.json"), "elapsed_s": summary["elapsed_s"],
            "stages": {k: v["status"] for k, v in summary["stages"].items()}}
