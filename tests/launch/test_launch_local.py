"""--cluster local: the same phase chain as subprocesses in sequence, stopping at the first failure."""

from __future__ import annotations

import json

import pytest

from launch_helpers import ROOT, SMOKE, run_submit

pytestmark = pytest.mark.slow


def test_local_phase0_smoke(tmp_path):
    res = run_submit("--phase", "0", "--cluster", "local", "--run-name", "loc", "max_steps=100", *SMOKE,
                     f"output_dir={tmp_path}", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "loc" / "phase0" / "gate.json").read_text())["passed"] is True
    assert "[local] phase 0: done, gate passed" in res.stdout


def test_local_chain_stops_at_failed_gate(tmp_path):
    if not (ROOT / "configs" / "phase1.yaml").is_file():
        pytest.fail("configs/phase1.yaml is missing (chain tests need phases 0 and 1)")
    res = run_submit("--phase", "0-1", "--cluster", "local", "--run-name", "locfail", "max_steps=10", *SMOKE,
                     "gate.enforce=true", "gate.max_val_nmse=1e-9", f"output_dir={tmp_path}", timeout=300)
    assert res.returncode == 3, res.stderr[-3000:]
    assert "error: phase 0 exited 3 (phase gate failed); later phases not started" in res.stderr
    assert not (tmp_path / "locfail" / "phase1").exists()


def test_an_error_after_a_failed_gate_is_not_reported_as_the_gate(tmp_path):
    """A phase rerun in a folder whose gate.json says 'failed' and that then errors (exit 1) is an
    error, not a gate failure: the launcher reads the exit code, not the stale gate.json."""
    args = ("--phase", "0", "--cluster", "local", "--run-name", "stale", "max_steps=10", *SMOKE,
            f"output_dir={tmp_path}")
    first = run_submit(*args, "gate.enforce=true", "gate.max_val_nmse=1e-9", timeout=300)
    assert first.returncode == 3, first.stderr[-3000:]
    assert json.loads((tmp_path / "stale" / "phase0" / "gate.json").read_text())["passed"] is False
    again = run_submit(*args, "debug.fail_validation_on_rank=0", timeout=300)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "error: phase 0 exited 1; later phases not started" in again.stderr
    assert "phase gate failed" not in again.stderr
