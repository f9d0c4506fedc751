"""The dry run's sbatch scripts are, byte for byte, the scripts submitit submits (real SLURM).

ris_dist renders the dry-run text itself (no SLURM client, no private submitit helpers); this
checks that rendering against what submitit actually handed to sbatch on the test cluster.
"""

from __future__ import annotations

import re
import shlex

import pytest

from launch_helpers import job_ids, run_submit

pytestmark = pytest.mark.slow


def _dry_run_scripts(text: str) -> dict[int, str]:
    found = re.findall(r"^# ===== phase (\d): sbatch script =====\n(.*?)\n# ===== phase \1: command", text,
                       flags=re.M | re.S)
    return {int(phase): script + "\n" for phase, script in found}


def test_dry_run_is_the_script_submitit_submitted(slurm_cluster, profile, tmp_path):
    args = ["--phase", "0-1", "--cluster", "slurm", "--profile", str(profile), "--run-name", "render",
            "max_steps=5", f"output_dir={tmp_path / 'runs'}"]
    dry = run_submit(*args, "--dry-run", timeout=120)
    assert dry.returncode == 0, dry.stderr
    scripts = _dry_run_scripts(dry.stdout)
    assert sorted(scripts) == [0, 1]
    res = run_submit(*args, timeout=120)
    assert res.returncode == 0, res.stderr
    ids = job_ids(res.stdout)
    slurm_cluster.run("scancel", ids["phase1"], ids["phase0"], check=False)  # phase 0 may have finished already
    for jid in ids.values():
        slurm_cluster.wait_state(jid, ("CANCELLED", "COMPLETED", "FAILED"), timeout=120)
    log_dir = tmp_path / "slurm"
    for phase in (0, 1):
        jid = ids[f"phase{phase}"]
        submitted = (log_dir / jid / f"{jid}_submission.sh").read_text()
        expected = scripts[phase].replace(shlex.quote("afterok:<job id of phase 0>"),
                                          shlex.quote(f"afterok:{ids['phase0']}"))
        assert submitted == expected
