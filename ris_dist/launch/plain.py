"""Plain sbatch scripts (slurm/phaseN.sh, slurm/chain.sh) for users without submitit.

They are rendered from a cluster profile with the same resources (#SBATCH lines) and the same
per-node command as submit.py's submitit jobs, and the same requeue rule: on USR2/TERM the batch
shell asks the trainer ranks to save (SIGUSR1), waits, then ``scontrol requeue`` while
SLURM_RESTART_COUNT < MAX_REQUEUES. Regenerate the shipped ones with

    python -m ris_dist.launch.plain --profile configs/cluster/example_gpu.yaml --out slurm
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .command import MAX_PHASE, NODE_RANK, PhaseRequest, Var, train_command
from .profile import RUN_NAME_RE, ClusterProfile, load_profile
from .slurm import executor_parameters

PLACE_RUN = "run_name=@RUN_NAME@"
#: options that submitit adds for its own bookkeeping (logs, wckey) and that are not resources
SUBMITIT_ONLY = ("output", "error", "open-mode", "wckey", "job-name", "dependency", "kill-on-invalid-dep", "signal")


def sbatch_options(profile: ClusterProfile) -> dict[str, str | bool]:
    """Resource options shared by both launchers (name -> value, True for flags)."""
    params = executor_parameters(profile, Path("."), "x", None)
    out: dict[str, str | bool] = {}
    for key, value in params.items():
        if key in ("setup", "stderr_to_stdout", "signal_delay_s", "job_name", "additional_parameters"):
            continue
        out[key.replace("_", "-")] = value if value is True else str(value)
    for key, value in params["additional_parameters"].items():
        out[key] = value if value is True else str(value)
    return out


def _flag(key: str, value: str | bool) -> str:
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def _arg(a: str | Var) -> str:
    if a is NODE_RANK or a == NODE_RANK:
        return "@NODE_RANK@"
    if isinstance(a, Var):
        return a.shell()
    if a == PLACE_RUN:
        return '"run_name=$RUN_NAME"'
    return shlex.quote(a)


def render_phase_script(phase: int, profile: ClusterProfile, source: str) -> str:
    req = PhaseRequest([phase], "@RUN_NAME@", [], recipe=profile.recipe)
    argv = train_command(phase, profile, req, "@PYTHON@")
    cmd = " ".join('"$PYTHON"' if a == "@PYTHON@" else _arg(a) for a in argv) + ' "$@"'
    lines = [
        "#!/bin/bash",
        "# shellcheck disable=SC1091,SC2317  # setup lines source site files; on_signal runs from trap",
        f"# ris_dist phase {phase}: plain sbatch script (no submitit), generated from {source}.",
        f"# Same resources and per-node command as: python launch/submit.py --phase {phase} --profile {source}",
        "# Regenerate: python -m ris_dist.launch.plain --profile " + source + " --out slurm",
        f"# Usage (from the repository root): RUN_NAME=myrun sbatch slurm/phase{phase}.sh [key=value ...]",
        f"#SBATCH --job-name=ris-phase{phase}",
        *(_flag(k, v) for k, v in sorted(sbatch_options(profile).items())),
        f"#SBATCH --signal=B:USR2@{profile.signal_delay_s}",
        "#SBATCH --open-mode=append",
        "#SBATCH --output=slurm-%x-%j.out",
        "set -euo pipefail",
        "",
        'RUN_NAME="${RUN_NAME:-default}"',
        f'MAX_REQUEUES="${{MAX_REQUEUES:-{profile.max_requeues}}}"',
        f"RUN_NAME_RE='{RUN_NAME_RE.pattern}'",
        'if [[ ! "$RUN_NAME" =~ $RUN_NAME_RE ]]; then',
        '  echo "error: RUN_NAME=$RUN_NAME must match $RUN_NAME_RE" >&2; exit 2',
        "fi",
        "OVERRIDE_RE='^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z0-9_]+)*=[^]$`;&|<>\\\\[:cntrl:]]*$'",
        'for arg in "$@"; do',
        '  if [[ ! "$arg" =~ $OVERRIDE_RE ]]; then echo "error: override $arg: expected dotted.key=value without shell metacharacters" >&2; exit 2; fi',
        "done",
        'if [[ ! "$MAX_REQUEUES" =~ ^[0-9]+$ ]]; then echo "error: MAX_REQUEUES must be a number" >&2; exit 2; fi',
        "",
        "# environment (profile env and setup lines)",
        *(f"export {k}={shlex.quote(v)}" for k, v in sorted(profile.env.items())),
        *profile.setup,
        'PYTHON="${PYTHON:-python3}"',
        "",
        "# one task per node; rank 0's host is the rendezvous, the port comes from the job id",
        'MAIN_IP="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        "MAIN_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "",
        "preempted=0",
        "on_signal() {",
        '  if [ "$preempted" = 0 ]; then',
        '    preempted=1',
        '    echo "[launch] preemption/timeout signal: asking the trainer to save" >&2',
        '    scancel --signal=USR1 "$SLURM_JOB_ID" || true',
        "  fi",
        "}",
        "trap on_signal USR2 TERM",
        "",
        "# the launcher ignores USR1/USR2 (the ranks install their own handlers); @NODE_RANK@ = SLURM_NODEID",
        "# shellcheck disable=SC2016",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=0 bash -c "
        "'trap \"\" USR1 USR2; a=(); for x in \"$@\"; do [ \"$x\" = @NODE_RANK@ ] && x=\"$SLURM_NODEID\"; a+=(\"$x\"); done; "
        "exec \"${a[@]}\"' ris-node \\",
        "  " + cmd + " &",
        "pid=$!",
        'while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done',
        'rc=0; wait "$pid" || rc=$?',
        "",
        'if [ "$preempted" = 1 ] || [ "$rc" = 75 ]; then',
        '  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then',
        '    echo "[launch] requeue $(( ${SLURM_RESTART_COUNT:-0} + 1 ))/$MAX_REQUEUES" >&2',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "  fi",
        '  echo "error: preempted, $MAX_REQUEUES requeues used" >&2',
        "  exit 75",
        "fi",
        'exit "$rc"',
        "",
    ]
    return "\n".join(lines)


def render_chain_script(source: str) -> str:
    return "\n".join([
        "#!/bin/bash",
        "# ris_dist phase chain without submitit: one sbatch job per phase, linked by afterok",
        f"# (a phase whose gate fails exits non-zero, so later phases never start). Generated from {source}.",
        "# Usage (from the repository root): RUN_NAME=myrun bash slurm/chain.sh [FIRST [LAST]] [key=value ...]",
        "set -euo pipefail",
        f"first=0; last={MAX_PHASE}",
        'if [[ "${1:-}" =~ ^[0-9]$ ]]; then first=$1; shift; fi',
        'if [[ "${1:-}" =~ ^[0-9]$ ]]; then last=$1; shift; fi',
        f'if [ "$first" -gt "$last" ] || [ "$last" -gt {MAX_PHASE} ]; then echo "error: phases must satisfy 0 <= FIRST <= LAST <= {MAX_PHASE}" >&2; exit 2; fi',
        'export RUN_NAME="${RUN_NAME:-default}"',
        f"RUN_NAME_RE='{RUN_NAME_RE.pattern}'",
        'if [[ ! "$RUN_NAME" =~ $RUN_NAME_RE ]]; then echo "error: RUN_NAME=$RUN_NAME must match $RUN_NAME_RE" >&2; exit 2; fi',
        'if [ "$first" -gt 0 ]; then',
        '  best="runs/$RUN_NAME/phase$((first - 1))/best/model.pt"',
        '  if [ ! -f "$best" ]; then echo "error: phase $first needs $best (run phase $((first - 1)) with RUN_NAME=$RUN_NAME first)" >&2; exit 2; fi',
        "fi",
        'prev=""',
        'for phase in $(seq "$first" "$last"); do',
        "  dep=()",
        '  if [ -n "$prev" ]; then dep=(--dependency="afterok:$prev" --kill-on-invalid-dep=yes); fi',
        '  prev="$(sbatch --parsable "${dep[@]}" "slurm/phase$phase.sh" "$@")"',
        '  prev="${prev%%;*}"',
        '  echo "phase$phase job $prev"',
        "done",
        "",
    ])


def write_scripts(profile_path: str, out: Path) -> list[Path]:
    profile = load_profile(profile_path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for phase in range(MAX_PHASE + 1):
        path = out / f"phase{phase}.sh"
        path.write_text(render_phase_script(phase, profile, profile_path))
        written.append(path)
    chain = out / "chain.sh"
    chain.write_text(render_chain_script(profile_path))
    written.append(chain)
    for path in written:
        path.chmod(0o755)
    return written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ris_dist.launch.plain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="configs/cluster/example_gpu.yaml")
    p.add_argument("--out", default="slurm")
    args = p.parse_args(argv)
    for path in write_scripts(args.profile, Path(args.out)):
        print(path)


if __name__ == "__main__":
    main()
