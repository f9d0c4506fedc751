"""A checkpoint whose trainer_state.json is missing or corrupt: named, skipped, or exit 2."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from ris_dist.train import checkpoint as ckpt

from trainrun import FAST, checkpoint_dir, train


def _folder(root: Path, step: int, state: str | None) -> Path:
    """A published checkpoint folder (COMPLETE marker) with ``state`` as its trainer_state.json."""
    path = root / ckpt.checkpoint_name(step)
    path.mkdir(parents=True)
    if state is not None:
        (path / ckpt.STATE_FILE).write_text(state)
    (path / ckpt.MARKER).write_text("ok\n")
    return path


GOOD = json.dumps({"trainer": {"step": 1}})


@pytest.mark.parametrize("bad, why", [(None, "missing trainer state"), ('{"trainer": {"st', "invalid JSON"),
                                      ("[1, 2]", "no 'trainer' mapping")])
def test_unreadable_state_falls_back_to_the_previous_checkpoint(tmp_path, caplog, bad, why):
    older = _folder(tmp_path, 1, GOOD)
    newer = _folder(tmp_path, 2, bad)
    with caplog.at_level(logging.WARNING, logger="ris_dist.train"):
        assert ckpt.latest_valid(tmp_path) == older
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping checkpoint:")]
    assert len(skipped) == 1 and "\n" not in skipped[0], skipped
    assert skipped[0].startswith(f"skipping checkpoint: {newer / ckpt.STATE_FILE}: {why}"), skipped


def test_only_checkpoint_unreadable_is_an_error_naming_the_file(tmp_path):
    bad = _folder(tmp_path, 3, "not json")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.latest_valid(tmp_path)
    msg = str(err.value)
    assert msg.startswith(f"{bad / ckpt.STATE_FILE}: invalid JSON") and "\n" not in msg
    assert f"no earlier valid checkpoint under {tmp_path}" in msg


def test_no_checkpoint_at_all_starts_fresh(tmp_path):
    assert ckpt.latest_valid(tmp_path / "nothing") is None
    _folder(tmp_path, 4, GOOD).joinpath(ckpt.MARKER).unlink()  # unpublished: never a candidate
    assert ckpt.latest_valid(tmp_path) is None


@pytest.mark.slow
def test_run_resumes_from_previous_checkpoint_then_exits_2_when_none_is_left(tmp_path):
    base = FAST + ["checkpoint.every_steps=2", "checkpoint.keep_last=3"]
    first = train(tmp_path, base + ["max_steps=4"])
    assert first.returncode == 0, first.log[-3000:]
    state4 = checkpoint_dir(first.run_dir, 4) / ckpt.STATE_FILE
    state4.write_text('{"trainer": ')  # truncated by a full disk, say
    again = train(tmp_path, base + ["max_steps=6"])
    assert again.returncode == 0, again.log[-3000:]
    assert f"skipping checkpoint: {state4}: invalid JSON" in again.log
    assert re.search(r"resumed from \S+step-00000002 at step 2", again.log), again.log[-3000:]
    assert sorted(again.records("train")) == list(range(1, 7))
    # Now every published checkpoint is unreadable: refuse to restart from scratch.
    for step in (2, 4):
        (checkpoint_dir(first.run_dir, step) / ckpt.STATE_FILE).unlink()
    state6 = checkpoint_dir(first.run_dir, 6) / ckpt.STATE_FILE
    state6.write_text("garbage")
    last = train(tmp_path, base + ["max_steps=8"])
    assert last.returncode == 2, last.log[-3000:]
    line = last.log.strip().splitlines()[-1]
    assert line.startswith(f"error: {state6}: invalid JSON") and "no earlier valid checkpoint" in line, line
