"""submitit executors per phase, afterok chains, and the sbatch text they submit (dry runs).

Submission goes through submitit's public API (``SlurmExecutor``, ``update_parameters``,
``submit``). The dry run renders the batch script itself, from the same parameters, in the
layout submitit 1.5 writes (``#SBATCH`` lines sorted by key, setup lines, one ``srun`` of
submitit's runner), so it needs neither SLURM on PATH nor submitit's private helpers. A test
against the real SLURM harness (tests/launch/test_launch_render.py) checks that this text is
byte for byte the script submitit submitted; pyproject pins submitit to the tested minor version.
"""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from ..config.schema import ConfigError
from .command import PhaseRequest, to_shell, train_command
from .profile import ClusterProfile

#: what submitit runs on each node to unpickle and call the submitted task
SUBMITIT_RUNNER = "-u -m submitit.core._submit"
#: sbatch keys submitit sets for every job (besides the executor parameters)
SUBMITIT_WCKEY = "submitit"
#: executor parameters that are not #SBATCH lines
NOT_SBATCH = ("setup", "signal_delay_s", "stderr_to_stdout", "additional_parameters")


def setup_lines(profile: ClusterProfile, root: Path) -> list[str]:
    lines = [f"cd {shlex.quote(str(root))}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(profile.env.items())]
    lines += list(profile.setup)
    return lines


def executor_parameters(profile: ClusterProfile, root: Path, job_name: str, dependency: str | None) -> dict[str, Any]:
    """Parameters of submitit's SlurmExecutor (rendered by submitit with shlex.quote per #SBATCH value)."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": profile.nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": profile.cpus_per_task,
        "time": profile.time_min,
        "signal_delay_s": profile.signal_delay_s,
        "setup": setup_lines(profile, root),
        "stderr_to_stdout": True,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(profile, key):
            params[key] = getattr(profile, key)
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    if profile.mem_gb:
        params["mem"] = f"{profile.mem_gb}GB"
    if profile.exclusive:
        params["exclusive"] = True
    extra: dict[str, Any] = {"requeue": True}
    if dependency:
        extra["dependency"] = dependency
        extra["kill-on-invalid-dep"] = "yes"
    params["additional_parameters"] = extra
    return params


def log_folder(profile: ClusterProfile, root: Path) -> Path:
    """submitit's job folder pattern (``%j`` = job id), absolute as submitit makes it."""
    folder = Path(profile.log_dir).expanduser()
    folder = folder if folder.is_absolute() else root / folder
    return (folder / "%j").absolute()


def require_slurm_client() -> None:
    """A one-line ConfigError when this machine cannot submit (submitit would raise a RuntimeError)."""
    missing = [tool for tool in ("srun", "sbatch") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(f"--cluster slurm: {' and '.join(missing)} not found on PATH (this machine is not a "
                          "SLURM submit host; use --dry-run to print the scripts, or --cluster local)")


def make_executor(profile: ClusterProfile, root: Path, python: str):
    import submitit

    require_slurm_client()
    return submitit.SlurmExecutor(folder=log_folder(profile, root), max_num_timeout=profile.max_requeues,
                                  python=shlex.quote(python))


def _sbatch_flag(key: str, value: Any) -> str:
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def render_sbatch(params: dict[str, Any], folder: Path, python: str) -> str:
    """The batch script submitit submits for one job with these executor parameters.

    ``params`` is :func:`executor_parameters` (no job arrays); ``folder`` is :func:`log_folder`.
    """
    stdout, stderr = str(folder / "%j_%t_log.out"), str(folder / "%j_%t_log.err")
    flags: dict[str, Any] = {k: v for k, v in params.items() if k not in NOT_SBATCH and v is not None}
    flags["wckey"] = SUBMITIT_WCKEY
    flags["signal"] = f"USR2@{params['signal_delay_s']}"
    flags["output"] = stdout.replace("%t", "0")
    srun_argv = ["srun", "--unbuffered", "--output", stdout]
    if not params.get("stderr_to_stdout"):
        flags["error"] = stderr.replace("%t", "0")
        srun_argv += ["--error", stderr]
    flags["open-mode"] = "append"
    flags.update(params.get("additional_parameters") or {})
    runner = " ".join([shlex.quote(python), SUBMITIT_RUNNER, shlex.quote(str(folder))])
    lines = ["#!/bin/bash", "", "# Parameters", *(_sbatch_flag(k, flags[k]) for k in sorted(flags))]
    lines += ["", "# setup", *params["setup"]]
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=slurm", f"{shlex.join(srun_argv)} {runner}", ""]
    return "\n".join(lines)


def job_name(req: PhaseRequest, phase: int) -> str:
    return f"ris-{req.run_name}-phase{phase}"[:64]


def render_dry_run(profile: ClusterProfile, req: PhaseRequest, root: Path, python: str) -> str:
    """Each phase's sbatch script exactly as submitit would submit it, plus the per-node command.

    The whole text is valid bash (headers and commands are comments). Needs no SLURM client."""
    folder = log_folder(profile, root)
    out = [f"# ris_dist dry run: phases {req.phases}, run {req.run_name}, backend {profile.engine}, "
           f"{profile.nodes} node(s) x {profile.procs} process(es); nothing submitted"]
    prev = None
    for phase in req.phases:
        dep = f"afterok:<job id of phase {prev}>" if prev is not None else None
        script = render_sbatch(executor_parameters(profile, root, job_name(req, phase), dep), folder, python)
        cmd = to_shell(train_command(phase, profile, req, python))
        out += ["", f"# ===== phase {phase}: sbatch script =====", script.rstrip("\n"),
                f"# ===== phase {phase}: command of each node's task (NODE_RANK=$SLURM_NODEID, "
                "MAIN_IP=first host of $SLURM_JOB_NODELIST, MAIN_PORT=20000+jobid%20000) =====",
                "# " + cmd]
        prev = phase
    return "\n".join(out) + "\n"
