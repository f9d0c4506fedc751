"""A validation error on one rank ends every rank, non-zero, well within ``dist.timeout_s``.

Real ``accelerate launch`` with 2 CPU processes (DDP over gloo): rank 1 raises a MUSIC
failure inside the first validation while rank 0 goes on into the validation's gather.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from trainrun import FAST, REPO, command

TIMEOUT_S = 120
ERROR = "error: rank 1: RuntimeError: MUSIC failed on rank 1 (injected by debug.fail_validation_on_rank)"


def _tagged_pids(tag: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # ended while we looked
            continue
        if f"RIS_TEST_TAG={tag}".encode() in env:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_validation_error_on_one_rank_ends_all_ranks(tmp_path):
    tag = uuid.uuid4().hex
    cmd = command("cpu_ddp") + ["--config", "configs/phase0.yaml", f"output_dir={tmp_path}", "run_name=t", *FAST,
                                "max_steps=4", "val.at_start=true", "debug.fail_validation_on_rank=1",
                                f"dist.timeout_s={TIMEOUT_S}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RIS_TEST_TAG": tag})
    lines, failed_at = [], None
    for line in proc.stdout:  # ends when every process holding the pipe has exited
        lines.append(line)
        if failed_at is None and ERROR in line:
            failed_at = time.monotonic()
    proc.wait(timeout=60)
    ended_at = time.monotonic()
    log = "".join(lines)
    assert failed_at is not None, log[-4000:]
    assert proc.returncode != 0
    assert ended_at - failed_at < TIMEOUT_S / 2, f"took {ended_at - failed_at:.0f} s after the error"
    assert "[GRAD] step=1" not in log  # rank 0 never trained past the failed validation
    assert _tagged_pids(tag) == []  # no orphan rank
