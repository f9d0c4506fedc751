"""Against a real one-node SLURM (tests/launch/slurm_cluster.py): submit.py's jobs, chains, requeue.

Job state always comes from sacct (slurmdbd accounting), never from submitit's cache.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from launch_helpers import ROOT, SMOKE, job_ids, run_submit

pytestmark = pytest.mark.slow

FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")


def _log(profile_dir: Path, job_id: str) -> str:
    files = sorted((profile_dir / "slurm").glob(f"{job_id}/*.out"))
    return "\n".join(f.read_text(errors="replace") for f in files)


def test_phase0_on_slurm_completes_with_passing_gate(slurm_cluster, profile, tmp_path):
    out = tmp_path / "runs"
    res = run_submit("--phase", "0", "--cluster", "slurm", "--profile", str(profile), "--run-name", "s0", "--wait",
                     "max_steps=100", *SMOKE, f"output_dir={out}")
    jid = job_ids(res.stdout)["phase0"]
    assert res.returncode == 0 and f"phase0 job {jid}: COMPLETED" in res.stdout, res.stdout + res.stderr
    state = slurm_cluster.wait_state(jid, FINAL, timeout=240)
    assert state == "COMPLETED", _log(tmp_path, jid)
    gate = json.loads((out / "s0" / "phase0" / "gate.json").read_text())
    assert gate["passed"] is True
    assert (out / "s0" / "phase0" / "best" / "model.pt").is_file()


def _phase1_ready() -> None:
    if not (ROOT / "configs" / "phase1.yaml").is_file():
        pytest.fail("configs/phase1.yaml is missing (chain tests need phases 0 and 1)")


def test_chain_runs_phase1_only_after_phase0(slurm_cluster, profile, tmp_path):
    _phase1_ready()
    out = tmp_path / "runs"
    res = run_submit("--phase", "0-1", "--cluster", "slurm", "--profile", str(profile), "--run-name", "c01",
                     "max_steps=60", *SMOKE, "gate.enforce=false", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    ids = job_ids(res.stdout)
    assert set(ids) == {"phase0", "phase1"}
    assert f"afterok:{ids['phase0']}" in res.stdout
    # Right after submission phase 0 is still starting Python, so phase 1 is queued on its dependency.
    queued = slurm_cluster.run("squeue", "-h", "-j", ids["phase1"], "-o", "%T %r", check=False).stdout.split()
    assert queued == ["PENDING", "Dependency"], queued
    s1 = slurm_cluster.wait_state(ids["phase1"], FINAL, timeout=300)
    s0 = slurm_cluster.state(ids["phase0"])
    assert s0 == "COMPLETED", _log(tmp_path, ids["phase0"])
    assert s1 == "COMPLETED", _log(tmp_path, ids["phase1"])
    end0 = slurm_cluster.sacct(ids["phase0"])[0]["End"]
    start1 = slurm_cluster.sacct(ids["phase1"])[0]["Start"]
    assert start1 >= end0, (end0, start1)  # ISO timestamps compare as strings
    assert (out / "c01" / "phase1" / "gate.json").is_file()


def test_failed_gate_never_starts_next_phase(slurm_cluster, profile, tmp_path):
    _phase1_ready()
    out = tmp_path / "runs"
    res = run_submit("--phase", "0-1", "--cluster", "slurm", "--profile", str(profile), "--run-name", "fail",
                     "max_steps=20", *SMOKE, "gate.enforce=true", "gate.max_val_nmse=1e-9", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    ids = job_ids(res.stdout)
    s0 = slurm_cluster.wait_state(ids["phase0"], FINAL, timeout=240)
    assert s0 == "FAILED", _log(tmp_path, ids["phase0"])
    gate = json.loads((out / "fail" / "phase0" / "gate.json").read_text())
    assert gate["passed"] is False
    s1 = slurm_cluster.wait_state(ids["phase1"], ("CANCELLED",), timeout=60)
    assert s1 == "CANCELLED"
    row = slurm_cluster.sacct(ids["phase1"])[0]
    assert row["Start"] in ("None", "Unknown", row["End"]), row  # never ran
    assert not (out / "fail" / "phase1").exists()


def test_preemption_requeues_and_resumes_from_checkpoint(slurm_cluster, profile, tmp_path):
    out = tmp_path / "runs"
    steps = 600
    res = run_submit("--phase", "0", "--cluster", "slurm", "--profile", str(profile), "--run-name", "pre",
                     f"max_steps={steps}", *SMOKE, "checkpoint.every_steps=100000", "log.every_steps=20",
                     "gate.enforce=false", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    jid = job_ids(res.stdout)["phase0"]
    slurm_cluster.wait_state(jid, ("RUNNING",), timeout=120)
    # wait until the trainer is stepping
    deadline = time.monotonic() + 120
    while not re.search(r"\[GRAD\] step=(4\d|[5-9]\d|\d{3,})\b", _log(tmp_path, jid)):
        assert time.monotonic() < deadline, _log(tmp_path, jid)
        assert slurm_cluster.state(jid) == "RUNNING", _log(tmp_path, jid)
        time.sleep(0.5)
    # a higher-priority partition job that needs the whole node preempts it
    t_preempt = time.time()
    hi = slurm_cluster.run("sbatch", "--parsable", "-p", "high", "--exclusive", "-t", "2",
                           f"--output={tmp_path}/high-%j.out", "--wrap", "sleep 1").stdout.strip()
    slurm_cluster.wait_state(hi, FINAL, timeout=180)
    state = slurm_cluster.wait_state(jid, FINAL, timeout=300)
    log = _log(tmp_path, jid)
    assert state == "COMPLETED", log
    saved = [int(s) for s in re.findall(r"preemption requested: saving at step (\d+)", log)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert saved and resumed, log
    assert resumed[0] == saved[0], (saved, resumed)  # no step lost beyond the synced save
    assert re.search(r"restart 1 start", log), log
    starts = [float(t) for t in re.findall(r"restart \d+ start ([\d.]+)", log)]
    print(f"\n[slurm] requeue: preempting job submitted at {t_preempt:.1f}; rerun started "
          f"{starts[-1] - t_preempt:.1f}s later; saved step {saved[0]}", flush=True)
    # The requeued run finished every step: its last checkpoint and digest are at max_steps.
    final = out / "pre" / "phase0" / "checkpoints" / f"step-{steps:08d}"
    assert json.loads((final / "trainer_state.json").read_text())["trainer"]["step"] == steps
    assert f"[DIGEST] rank=0 step={steps} " in log, log[-3000:]
    assert (out / "pre" / "phase0" / "gate.json").is_file()
    rows = slurm_cluster.run("sacct", "-n", "-P", "-D", "-X", "-j", jid, "-o", "State", check=False).stdout.split()
    assert any(s.startswith(("PREEMPTED", "REQUEUED")) for s in rows), rows


def test_plain_sbatch_script_runs_phase0(slurm_cluster, profile, tmp_path):
    """The submitit-free script (slurm/phaseN.sh rendered for this cluster's profile) runs the same phase."""
    import os
    import sys

    from ris_dist.launch.plain import render_phase_script
    from ris_dist.launch.profile import load_profile

    script = tmp_path / "phase0.sh"
    script.write_text(render_phase_script(0, load_profile(profile), str(profile)))
    out = tmp_path / "runs"
    res = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/plain-%j.out", str(script), "max_steps=100",
                          *SMOKE, f"output_dir={out}"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "RUN_NAME": "plain", "PYTHON": sys.executable})
    assert res.returncode == 0, res.stderr
    jid = res.stdout.strip().split(";")[0]
    state = slurm_cluster.wait_state(jid, FINAL, timeout=240)
    log = "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("plain-*.out"))
    assert state == "COMPLETED", log[-3000:]
    assert json.loads((out / "plain" / "phase0" / "gate.json").read_text())["passed"] is True


def test_time_limit_signal_requeues_accelerate_ranks_and_is_bounded(slurm_cluster, profile, tmp_path):
    """USR2 (what SLURM sends signal_delay_s before the time limit) on a 2-rank `accelerate launch` job:
    the ranks save together and the job is requeued once (max_requeues=1); the second signal ends it."""
    out = tmp_path / "runs"
    res = run_submit("--phase", "0", "--cluster", "slurm", "--profile", str(profile), "--run-name", "ddp",
                     "--backend", "cpu_ddp", "--cpus-per-task", str(min(2, slurm_cluster.cpus)),
                     "--max-requeues", "1", "max_steps=100000", *SMOKE, "checkpoint.every_steps=100000",
                     "log.every_steps=20", "gate.enforce=false", f"output_dir={out}")
    assert res.returncode == 0, res.stderr
    jid = job_ids(res.stdout)["phase0"]

    def stepping(after: int) -> None:
        deadline = time.monotonic() + 150
        while len(re.findall(r"\[GRAD\] step=(?:[2-9]\d|\d{3,})\b", _log(tmp_path, jid))) <= after:
            assert time.monotonic() < deadline, _log(tmp_path, jid)[-4000:]
            assert slurm_cluster.state(jid) in ("RUNNING", "PENDING", "REQUEUED"), _log(tmp_path, jid)[-4000:]
            time.sleep(0.5)

    slurm_cluster.wait_state(jid, ("RUNNING",), timeout=120)
    stepping(0)
    slurm_cluster.run("scancel", "--signal=USR2", jid)
    deadline = time.monotonic() + 120
    while "restart 1 start" not in _log(tmp_path, jid):
        assert time.monotonic() < deadline, _log(tmp_path, jid)[-4000:]
        time.sleep(0.5)
    n_before = len(re.findall(r"\[GRAD\] step=(?:[2-9]\d|\d{3,})\b", _log(tmp_path, jid)))
    stepping(n_before)
    slurm_cluster.run("scancel", "--signal=USR2", jid)
    state = slurm_cluster.wait_state(jid, FINAL, timeout=120)
    log = _log(tmp_path, jid)
    assert state == "FAILED", log[-4000:]
    assert "not requeuing" in log, log[-4000:]
    saved = [int(s) for s in re.findall(r"preemption requested: saving at step (\d+)", log)]
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert len(saved) >= 2 and resumed and resumed[0] == saved[0], (saved, resumed)
    ckpts = sorted((out / "ddp" / "phase0" / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "COMPLETE").is_file()
    assert ckpts[-1].name == f"step-{saved[-1]:08d}"
    assert len(re.findall(r"restart \d+ start", log)) == 2  # one requeue, then no more


def test_gpu_flags_get_a_gres_allocation(slurm_cluster, tmp_path):
    """A profile with gpus_per_node: 2 submits through the launcher's own executor parameters; SLURM
    allocates the node's two (fake) GPUs and exports them as CUDA_VISIBLE_DEVICES."""
    import sys

    import submitit

    from ris_dist.launch.profile import load_profile
    from ris_dist.launch.slurm import executor_parameters, make_executor

    text = (ROOT / "configs" / "cluster" / "local.yaml").read_text()
    text = re.sub(r"^gpus_per_node:.*$", "gpus_per_node: 2", text, flags=re.M)
    text = re.sub(r"^log_dir:.*$", f"log_dir: {tmp_path / 'slurm'}", text, flags=re.M)
    (tmp_path / "gpu.yaml").write_text(text)
    prof = load_profile(tmp_path / "gpu.yaml")
    params = executor_parameters(prof, ROOT, "ris-gres", None)
    assert params["gpus_per_node"] == 2
    ex = make_executor(prof, ROOT, sys.executable)
    ex.update_parameters(**params)
    job = ex.submit(submitit.helpers.CommandFunction(["env"]))
    env = dict(line.split("=", 1) for line in job.result().splitlines() if "=" in line)
    assert env.get("CUDA_VISIBLE_DEVICES") == "0,1", sorted(k for k in env if "GPU" in k or "CUDA" in k)
    tres = slurm_cluster.sacct_filled(job.job_id, "AllocTRES")
    assert "gres/gpu=2" in tres, tres
