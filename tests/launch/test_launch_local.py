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
