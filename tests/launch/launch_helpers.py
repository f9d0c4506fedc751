"""Shared helpers of the launcher tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "launch" / "submit.py"

#: a tiny phase-0 smoke run (~5 s of training on one CPU process)
SMOKE = ["data.train_scenes=64", "data.val_scenes=64", "data.batch_size=32", "log.progress_bar=false",
         "val.every_steps=50", "epochs=1000"]


def run_submit(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SUBMIT), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def job_ids(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^(phase\d) job (\d+)", stdout, flags=re.M))
