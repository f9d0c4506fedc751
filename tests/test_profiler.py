"""``profile.steps=[first,last]``: torch.profiler traces of exactly those optimizer steps, a top-ops table."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ris_dist.config import ConfigError
from ris_dist.train.config import load_train_config

REPO = Path(__file__).resolve().parents[1]


def read_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return json.load(fh)


def test_profiled_steps_have_trace_events_and_a_top_ops_table(tmp_path):
    cmd = [sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={tmp_path}",
           "run_name=prof", "max_steps=4", "data.train_scenes=128", "data.val_scenes=32", "data.batch_size=32",
           "data.val_batch_size=32", "gate.enforce=false", "log.every_steps=1", "log.progress_bar=false",
           "checkpoint.every_steps=0", "profile.steps=[2,3]", "profile.table_rows=12"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    traces = sorted((tmp_path / "prof" / "phase0" / "tb" / "profile").glob("rank0.*.pt.trace.json*"))
    assert len(traces) == 1, traces
    events = read_trace(traces[0])["traceEvents"]
    steps = {e["name"]: e for e in events if e.get("name", "").startswith("ProfilerStep#")}
    assert sorted(steps) == ["ProfilerStep#2", "ProfilerStep#3"]
    for step in steps.values():  # the optimizer's and the model's ops ran inside each profiled step
        start, end = step["ts"], step["ts"] + step["dur"]
        inside = {e["name"] for e in events
                  if e.get("cat") in ("cpu_op", "user_annotation") and start <= e["ts"] <= end}
        assert {"aten::mm", "Optimizer.step#AdamW.step"} <= inside, sorted(inside)[:20]

    lines = [line.split("[PROFILE] ", 1)[1] for line in proc.stderr.splitlines() if "[PROFILE] " in line]
    assert lines[0].startswith("steps 2..3, trace in ") and "top 12 ops by self_cpu_time_total" in lines[0]
    header = next(i for i, line in enumerate(lines) if re.match(r"\s*Name\s+Self CPU %\s+Self CPU", line))
    rows = [line for line in lines[header + 2:] if re.match(r"\s*\S+\s+[\d.]+%", line)]
    assert len(rows) == 12, lines
    assert any(row.split()[0] == "aten::mm" for row in rows)
    assert lines[-1].startswith("Self CPU time total:")


@pytest.mark.parametrize("steps, overrides, message", [
    ("[3,2]", [], "profile.steps: needs 1 <= first < last"),
    ("[2,2]", [], "profile.steps: needs 1 <= first < last"),
    ("[0,2]", [], "profile.steps: needs 1 <= first < last"),
    ("[2,9]", ["max_steps=8"], "profile.steps: the run takes 8 optimizer steps"),
    ("[2,9]", ["data.train_scenes=256", "data.batch_size=64", "epochs=2"], "the run takes 8 optimizer steps"),
    ("[2]", [], "profile.steps: expected tuple[int, int]"),
])
def test_profile_steps_are_validated(steps, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_train_config("phase0", [f"profile.steps={steps}", "max_steps=0", *overrides])


def test_profile_steps_within_the_run_are_accepted():
    cfg = load_train_config("phase0", ["profile.steps=[7,8]", "max_steps=8"])
    assert cfg.profile.steps == (7, 8)
