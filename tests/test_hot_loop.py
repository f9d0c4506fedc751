"""Outside logging steps an optimizer step reads ONE value on the host: the gate's decision.

A real training run (1 process; 2 processes DDP and DeepSpeed ZeRO-3 over gloo) under
``tests/sync_probe.py``, which counts the host reads and collectives ``ris_dist`` issues in
each step. Logging steps (1, 3, 6 with ``log.every_steps=3``) may read more; the last step
is left out because the end-of-run validation and save are charged to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trainrun import ACCELERATE, FAST, REPO

QUIET_STEPS = (2, 4, 5)
OVERRIDES = [*FAST, "data.train_scenes=4096", "max_steps=7", "log.every_steps=3", "optim.grad_clip=0.5"]


def _probe(tmp_path, backend: str | None) -> dict[int, dict]:
    script = str(REPO / "tests" / "sync_probe.py")
    launcher = [sys.executable] if backend is None else [ACCELERATE, "launch", "--config_file",
                                                         f"configs/accelerate/{backend}.yaml"]
    cmd = [*launcher, script, "--config", "configs/phase0.yaml", f"output_dir={tmp_path}", "run_name=t", *OVERRIDES]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SYNC_PROBE_OUT": str(tmp_path / "probe")})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = {}
    for path in sorted((tmp_path / "probe").glob("rank*.json")):
        ranks[int(path.stem[4:])] = json.loads(path.read_text())
    return ranks


@pytest.mark.slow
@pytest.mark.parametrize("backend, world, collectives", [
    (None, 1, []),
    ("cpu_ddp", 2, ["gate.py"]),
    ("deepspeed_zero3", 2, ["backend.py", "gate.py"]),  # the partition norm's SUM, then the gate's MAX
])
def test_one_host_read_per_quiet_step(tmp_path, backend, world, collectives):
    ranks = _probe(tmp_path, backend)
    assert sorted(ranks) == list(range(world))
    for rank, probe in ranks.items():
        assert probe["exit_code"] == 0
        # dist.timeout_s (its default, 600 s: the value Accelerate would drop) is the group's timeout.
        assert probe["pg_timeout_s"] == (None if world == 1 else 600.0)
        device = probe["device"]
        for step in QUIET_STEPS:
            events = probe["steps"][str(step)]
            reads = events["reads"]
            assert len(reads) == 1 and reads[0].startswith("tolist@distributed/gate.py"), (rank, step, reads)
            sites = [c.split("@")[1].split(":")[0].rsplit("/", 1)[-1] for c in events["collectives"]]
            assert sites == collectives, (rank, step, events["collectives"])
            assert all(c.startswith(f"all_reduce[{device}]") for c in events["collectives"]), events["collectives"]
        # Logging steps do read the losses: the probe sees reads where there are some.
        assert len(probe["steps"]["3"]["reads"]) > 1
