"""--recipe: which curriculum's phase configs a launch runs (dry runs; nothing is submitted)."""

from __future__ import annotations

import re
import subprocess

from launch_helpers import ROOT, run_submit

GPU = str(ROOT / "configs" / "cluster" / "example_gpu.yaml")


def _commands(out: str) -> dict[int, str]:
    """phase -> the per-node command printed by a SLURM dry run."""
    cmds = re.findall(r"^# ===== phase (\d): command of each node's task.*\n# (.*)$", out, flags=re.M)
    return {int(p): cmd for p, cmd in cmds}


def test_full_recipe_on_two_nodes_of_eight_gpus(tmp_path):
    res = run_submit("--phase", "all", "--recipe", "full", "--profile", GPU, "--nodes", "2", "--gpus-per-node", "8",
                     "--dry-run", timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    script = tmp_path / "dry.sh"
    script.write_text(out)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    cmds = _commands(out)
    assert sorted(cmds) == [0, 1, 2, 3]
    for p, cmd in cmds.items():
        assert f"-m ris_dist.train --config configs/full/phase{p}.yaml run_name=default" in cmd, cmd
        assert "--config_file configs/accelerate/deepspeed_zero2.yaml" in cmd
        assert "--num_machines 2 --num_processes 16 --machine_rank \"$NODE_RANK\"" in cmd
        assert "configs/phase" not in cmd  # never the tiny recipe's configs
    deps = re.findall(r"^#SBATCH --dependency='afterok:<job id of phase (\d)>'$", out, flags=re.M)
    assert deps == ["0", "1", "2"]  # each phase waits for the one before
    assert out.count("#SBATCH --nodes=2") == 4 and out.count("#SBATCH --gpus-per-node=8") == 4


def test_profile_recipe_is_the_default_and_the_flag_overrides_it():
    res = run_submit("--phase", "0", "--profile", GPU, "--dry-run", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "--config configs/full/phase0.yaml" in _commands(res.stdout)[0]
    res = run_submit("--phase", "0", "--profile", GPU, "--recipe", "tiny", "--dry-run", timeout=600)
    assert res.returncode == 0, res.stderr
    assert "--config configs/phase0.yaml" in _commands(res.stdout)[0]


def test_local_chain_of_full_lite_and_default_tiny():
    res = run_submit("--phase", "all", "--recipe", "full-lite", "--cluster", "local", "--dry-run", timeout=600)
    assert res.returncode == 0, res.stderr
    assert re.findall(r"--config (\S+)", res.stdout) == [f"configs/full-lite/phase{p}.yaml" for p in range(4)]
    res = run_submit("--phase", "0", "--cluster", "local", "--dry-run", timeout=600)  # local.yaml names no recipe
    assert res.returncode == 0, res.stderr
    assert re.findall(r"--config (\S+)", res.stdout) == ["configs/phase0.yaml"]


def test_unknown_recipe_is_one_line_exit_2(tmp_path):
    res = run_submit("--phase", "all", "--recipe", "huge", "--dry-run", timeout=600)
    assert res.returncode == 2 and res.stdout == ""
    err = res.stderr.strip()
    assert "\n" not in err and err.startswith("error: ") and "recipe" in err and "'huge'" in err, err
    assert all(name in err for name in ("tiny", "full", "full-lite")), err
    profile = tmp_path / "p.yaml"
    profile.write_text("nodes: 1\nrecipe: huge\n")
    res = run_submit("--phase", "0", "--profile", str(profile), "--dry-run", timeout=600)
    err = res.stderr.strip()
    assert res.returncode == 2 and "\n" not in err and str(profile) in err and "recipe" in err, err
