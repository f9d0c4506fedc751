"""--dry-run prints each phase's sbatch script and command (valid bash); slurm/*.sh match it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from ris_dist.launch.plain import render_chain_script, render_phase_script, sbatch_options
from ris_dist.launch.profile import load_profile

from launch_helpers import ROOT, run_submit

GPU = str(ROOT / "configs" / "cluster" / "example_gpu.yaml")


def _sbatch_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


def test_dry_run_all_phases_two_nodes(tmp_path):
    res = run_submit("--phase", "all", "--nodes", "2", "--gpus-per-node", "8", "--profile", GPU, "--dry-run",
                     "max_steps=100", timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    script = tmp_path / "dry.sh"
    script.write_text(out)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert out.count("#!/bin/bash") == 4
    for p in range(4):
        assert f"--job-name=ris-default-phase{p}" in out
        assert f"--config configs/full/phase{p}.yaml run_name=default max_steps=100" in out  # the profile's recipe
    for p in range(1, 4):
        assert f"#SBATCH --dependency='afterok:<job id of phase {p - 1}>'" in out
    assert out.count("#SBATCH --nodes=2") == 4 and out.count("#SBATCH --ntasks-per-node=1") == 4
    assert out.count("#SBATCH --gpus-per-node=8") == 4 and out.count("#SBATCH --requeue") == 4
    assert "--num_machines 2 --num_processes 16 --machine_rank \"$NODE_RANK\"" in out
    assert "--main_process_ip \"$MAIN_IP\" --main_process_port \"$MAIN_PORT\"" in out
    assert "configs/accelerate/deepspeed_zero2.yaml" in out
    assert "#SBATCH --signal=USR2@180" in out


def _path_with_only_python(tmp_path) -> str:
    """A PATH whose one directory holds only a link to this interpreter: no srun, sbatch or squeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    return str(bin_dir)


def test_dry_run_needs_no_slurm_on_path(tmp_path):
    res = run_submit("--phase", "all", "--cluster", "slurm", "--dry-run", "--profile", GPU, timeout=60,
                     env={"PATH": _path_with_only_python(tmp_path), "SLURM_CONF": str(tmp_path / "missing.conf")})
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for p in range(4):
        script = re.search(rf"^# ===== phase {p}: sbatch script =====\n(#!/bin/bash\n.*?)\n# ===== phase {p}: command"
                           rf".*?=====\n# (.*)$", out, re.M | re.S)
        assert script, f"phase {p}: no sbatch script / command in the dry run"
        assert f"#SBATCH --job-name=ris-default-phase{p}" in script.group(1)
        assert "srun --unbuffered" in script.group(1)
        assert f"--config configs/full/phase{p}.yaml run_name=default" in script.group(2)  # example_gpu: recipe full
    assert out.count("#!/bin/bash") == 4


def test_submit_without_slurm_is_a_one_line_error(tmp_path):
    res = run_submit("--phase", "0", "--cluster", "slurm", "--profile", GPU, timeout=60,
                     env={"PATH": _path_with_only_python(tmp_path)})
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith("error: --cluster slurm: srun and sbatch not found on PATH"), err


def _help_entries(text: str) -> dict[str, str]:
    """argparse --help sections -> {option or positional: its help text}."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):  # section header ("options:")
            current = None
            continue
        head = re.match(r"^  (\S.*?)(?:\s{2,}(\S.*))?$", line)
        if head:
            current = head.group(1)
            entries[current] = head.group(2) or ""
        elif current is not None and line.startswith(" " * 8) and line.strip():
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


def test_help_documents_every_flag():
    res = run_submit("--help", timeout=60)
    assert res.returncode == 0, res.stderr
    entries = _help_entries(res.stdout)
    usage = res.stdout.split("\n\n", 1)[0]
    flags = set(re.findall(r"(--[a-z][\w-]*)", usage))
    assert len(flags) >= 15, usage
    shown = {re.split(r"[ ,]", k)[0] for k in entries} | {re.split(r"[ ,]", k)[-1] for k in entries}
    assert flags <= shown, flags - shown
    empty = [k for k, v in entries.items() if not v]
    assert not empty, f"no help text: {empty}"
    assert "``" not in res.stdout and ":class:" not in res.stdout and ":data:" not in res.stdout


def test_bad_phase_spec():
    for spec in ("4", "2-1", "x", "0-9"):
        res = run_submit("--phase", spec, "--dry-run", timeout=60)
        assert res.returncode == 2 and res.stderr.startswith("error: --phase"), res.stderr


def test_phase_alone_needs_previous_best(tmp_path):
    res = run_submit("--phase", "2", "--cluster", "local", "--run-name", "nobest", f"output_dir={tmp_path}",
                     timeout=60)
    assert res.returncode == 2
    err = res.stderr.strip()
    assert "\n" not in err and "phase 1's best checkpoint" in err and "missing" in err, err


def test_shipped_slurm_scripts_are_generated_and_equivalent():
    profile = load_profile(GPU)
    rel = "configs/cluster/example_gpu.yaml"
    for p in range(4):
        shipped = (ROOT / "slurm" / f"phase{p}.sh").read_text()
        assert shipped == render_phase_script(p, profile, rel), f"slurm/phase{p}.sh is stale: regenerate it"
    assert (ROOT / "slurm" / "chain.sh").read_text() == render_chain_script(rel)
    # same resources as the submitit job of submit.py
    res = run_submit("--phase", "0", "--profile", GPU, "--dry-run", timeout=60)
    submitit_lines = set(_sbatch_lines(res.stdout))
    for flag in sbatch_options(profile):
        mine = [line for line in _sbatch_lines((ROOT / "slurm" / "phase0.sh").read_text())
                if line.startswith(f"#SBATCH --{flag}")]
        assert mine and mine[0] in submitit_lines, (flag, mine)
    # same per-node command
    cmd = re.search(r"^# (\S+ -m accelerate\.commands\.launch .*)$", res.stdout, re.M).group(1)
    args = cmd.split(" -m accelerate.commands.launch ", 1)[1].replace('"$NODE_RANK"', "@NODE_RANK@")
    plain = (ROOT / "slurm" / "phase0.sh").read_text()
    assert args.replace("run_name=default", '"run_name=$RUN_NAME"') in plain


@pytest.mark.parametrize("name", ["phase0.sh", "phase1.sh", "phase2.sh", "phase3.sh", "chain.sh"])
def test_slurm_scripts_pass_bash_n_and_shellcheck(name, missing_tool):
    path = ROOT / "slurm" / name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    if not shutil.which("shellcheck"):
        missing_tool("shellcheck not installed (.ci/run installs it)")
    res = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_plain_script_rejects_bad_run_name_and_overrides(tmp_path):
    script = ROOT / "slurm" / "phase0.sh"
    for env, args in (({"RUN_NAME": "x; id"}, []), ({"RUN_NAME": "ok"}, ["max_steps=$(id)"]),
                      ({"RUN_NAME": "ok"}, ["a;b=1"])):
        res = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30,
                             env={"PATH": "/usr/bin:/bin", **env}, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("error:"), res.stderr


def test_bad_trainer_override_fails_before_submitting():
    res = run_submit("--phase", "0-1", "--dry-run", "max_stepz=5", timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip()
    assert err.startswith("error: configs/phase0.yaml: max_stepz: unknown key") and "\n" not in err, err
