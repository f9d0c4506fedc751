"""submitit executors per phase, afterok chains, and the sbatch text they submit (dry runs)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from .command import PhaseRequest, to_shell, train_command
from .profile import ClusterProfile


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


def make_executor(profile: ClusterProfile, root: Path, python: str):
    import submitit

    folder = Path(profile.log_dir)
    folder = folder if folder.is_absolute() else root / folder
    return submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=profile.max_requeues,
                                  python=shlex.quote(python))


def job_name(req: PhaseRequest, phase: int) -> str:
    return f"ris-{req.run_name}-phase{phase}"[:64]


def render_dry_run(profile: ClusterProfile, req: PhaseRequest, root: Path, python: str) -> str:
    """Each phase's sbatch script exactly as submitit would submit it, plus the per-node command.

    The whole text is valid bash (headers and commands are comments)."""
    ex = make_executor(profile, root, python)
    out = [f"# ris_dist dry run: phases {req.phases}, run {req.run_name}, backend {profile.engine}, "
           f"{profile.nodes} node(s) x {profile.procs} process(es); nothing submitted"]
    prev = None
    for phase in req.phases:
        dep = f"afterok:<job id of phase {prev}>" if prev is not None else None
        ex.update_parameters(**executor_parameters(profile, root, job_name(req, phase), dep))
        script = ex._make_submission_file_text(ex._submitit_command_str, "dryrun")
        cmd = to_shell(train_command(phase, profile, req, python))
        out += ["", f"# ===== phase {phase}: sbatch script =====", script.rstrip("\n"),
                f"# ===== phase {phase}: command of each node's task (NODE_RANK=$SLURM_NODEID, "
                "MAIN_IP=first host of $SLURM_JOB_NODELIST, MAIN_PORT=20000+jobid%20000) =====",
                "# " + cmd]
        prev = phase
    return "\n".join(out) + "\n"
