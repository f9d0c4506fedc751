"""The ``launch/submit.py`` command line: submit training phases to SLURM or run them locally.

See :data:`DESCRIPTION` for the user-facing summary (``--help``) and docs/cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..config.schema import ConfigError
from .command import check_configs, check_inputs, make_request, train_command
from .profile import BACKENDS, load_profile
from .recipe import DEFAULT_RECIPE, RECIPES

EXIT_BAD_INPUT = 2


DESCRIPTION = """\
Submit ris_dist training phases to SLURM (one submitit job per phase, chained with afterok, so a
phase whose gate fails stops the chain), or run them in sequence on this machine (--cluster local).
--dry-run prints each phase's sbatch script and per-node command and needs no SLURM installation.

Exit codes: 0 ok, 2 bad input (one line "error: ..." on stderr), else the failing phase's code.
See docs/cluster.md.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python launch/submit.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--phase", required=True, help="phases to run: N, A-B or all (phases 0..3)")
    p.add_argument("--cluster", choices=("slurm", "local"), default="slurm",
                   help="slurm: submit jobs (default); local: run the phases here, one after another")
    p.add_argument("--profile", default=None,
                   help="cluster profile YAML (default: configs/cluster/local.yaml)")
    p.add_argument("--nodes", type=int, help="nodes per phase job (overrides the profile)")
    p.add_argument("--gpus-per-node", type=int,
                   help="GPUs per node; also the training processes per node of GPU backends")
    p.add_argument("--cpus-per-task", type=int, help="CPUs of the one task per node")
    p.add_argument("--time", type=int, dest="time_min", metavar="MIN", help="time limit per phase job, minutes")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--qos", help="SLURM quality of service")
    p.add_argument("--max-requeues", type=int, help="requeues per phase job (preemption or timeout) before it fails")
    p.add_argument("--backend", choices=BACKENDS,
                   help="accelerate config under configs/accelerate/ (single: plain python -m ris_dist.train)")
    p.add_argument("--recipe", help=f"curriculum: {', '.join(RECIPES)} (default: the profile's recipe, else "
                                    f"{DEFAULT_RECIPE}); see docs/full_recipe.md")
    p.add_argument("--run-name", help="run folder name: runs/RUN_NAME/phaseN (default: the run_name override, "
                                      "else 'default')")
    p.add_argument("--dry-run", action="store_true",
                   help="print the sbatch scripts and commands, submit nothing (no SLURM needed)")
    p.add_argument("--wait", action="store_true", help="slurm: wait for the chain and exit with its result")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="trainer dotted.key=value overrides (passed to every phase)")
    return p


def repo_root() -> Path:
    return Path.cwd().resolve()


def _profile_path(arg: str | None, root: Path) -> Path:
    """--profile relative to the repo root, or to the directory submit.py was started from."""
    if not arg:
        return root / "configs" / "cluster" / "local.yaml"
    path = Path(arg)
    if not path.is_absolute() and not (root / path).is_file():
        started = Path(os.environ.get("RIS_LAUNCH_CWD", root))
        if (started / path).is_file():
            return started / path
    return path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    root = repo_root()
    try:
        profile_path = _profile_path(args.profile, root)
        profile = load_profile(profile_path, {
            "nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "cpus_per_task": args.cpus_per_task,
            "time_min": args.time_min, "partition": args.partition, "account": args.account, "qos": args.qos,
            "max_requeues": args.max_requeues, "backend": args.backend, "recipe": args.recipe})
        req = make_request(args.phase, args.run_name, args.overrides, profile.recipe)
        python = profile.python or sys.executable
        if args.dry_run:
            check_configs(root, req)
            if args.cluster == "local":
                from .command import to_shell

                for phase in req.phases:
                    print(f"# phase {phase}\n{to_shell(train_command(phase, profile, req, python))}")
                return 0
            from .slurm import render_dry_run

            sys.stdout.write(render_dry_run(profile, req, root, python))
            return 0
        check_inputs(root, req)
        if args.cluster == "local" and profile.nodes != 1:
            raise ConfigError(f"--cluster local runs on this machine: nodes must be 1 (got {profile.nodes})")
        if args.cluster == "slurm":
            from .slurm import require_slurm_client

            require_slurm_client()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.cluster == "local":
        from .local import run_local

        return run_local(profile, req, root, python)
    return submit_slurm(profile, req, root, python, wait=args.wait)


def submit_slurm(profile, req, root: Path, python: str, wait: bool) -> int:
    from .slurm import executor_parameters, job_name, make_executor
    from .task import PhaseTask

    ex = make_executor(profile, root, python)
    jobs = []
    prev = None
    for phase in req.phases:
        dep = f"afterok:{prev.job_id}" if prev is not None else None
        ex.update_parameters(**executor_parameters(profile, root, job_name(req, phase), dep))
        task = PhaseTask(phase, train_command(phase, profile, req, python), str(root), str(req.run_dir(root, phase)),
                         profile.max_requeues, profile.signal_delay_s, launcher=profile.engine != "single")
        try:
            job = ex.submit(task)
        except (subprocess.CalledProcessError, OSError) as err:  # sbatch refused: its one-line reason
            print(f"error: phase {phase}: submission failed: {' '.join(str(err).split())}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"phase{phase} job {job.job_id}" + (f" ({dep})" if dep else ""), flush=True)
        jobs.append((phase, job))
        prev = job
    record = req.run_dir(root, req.phases[0]).parent / "slurm_jobs.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({f"phase{p}": j.job_id for p, j in jobs}, indent=1))
    if not wait:
        return 0
    return wait_for(jobs)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return out[0] if out else "UNKNOWN"


def wait_for(jobs, poll_s: float = 5.0) -> int:
    final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "DEADLINE", "BOOT_FAIL")
    for phase, job in jobs:
        while True:
            state = sacct_state(job.job_id)
            if state.split()[0].startswith(final):
                break
            time.sleep(poll_s)
        print(f"phase{phase} job {job.job_id}: {state}", flush=True)
        if state != "COMPLETED":
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
