"""Checkpoint resume: exact mid-epoch continuation, world-size change, kill -9 during a save."""

import json
import re

import pytest

from trainrun import FAST, train

# Dropout on, so the restored RNG state matters; 96 scenes / batch 32 = 3 steps per epoch,
# so step 4 is mid-epoch 1.
EXACT = FAST + ["mode=standard", "model.dropout=0.1", "max_steps=8"]
EXIT_REQUEUE = 75


def _losses(run):
    return {s: r["total"] for s, r in run.records("loss").items()}


def _interrupted(tmp_path, backend):
    first = train(tmp_path, EXACT + ["debug.preempt_at_step=4"], backend=backend)
    if backend is None:
        assert first.returncode == EXIT_REQUEUE, first.log[-3000:]
    else:  # torchrun reports any non-zero child as a failure; the marker says why
        assert first.returncode != 0
    marker = json.loads((first.run_dir / "preempted.json").read_text())
    assert marker["step"] == 4 and marker["exit_code"] == EXIT_REQUEUE
    assert (first.run_dir / "checkpoints" / "step-00000004" / "COMPLETE").is_file()
    second = train(tmp_path, EXACT, backend=backend)
    assert second.returncode == 0, second.log[-3000:]
    assert "resumed from" in second.log and "at step 4 (epoch 1, position 32)" in second.log
    assert not (second.run_dir / "preempted.json").exists()
    return second


@pytest.mark.slow
def test_single_process_resume_is_bitwise_equal(tmp_path):
    straight = train(tmp_path / "a", EXACT)
    assert straight.returncode == 0, straight.log[-3000:]
    resumed = _interrupted(tmp_path / "b", None)
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    assert a == b  # bitwise: JSON keeps every float exactly
    assert straight.digests() == resumed.digests()


@pytest.mark.slow
def test_two_process_ddp_resume_within_1e6(tmp_path):
    straight = train(tmp_path / "a", EXACT, backend="cpu_ddp")
    assert straight.returncode == 0, straight.log[-3000:]
    resumed = _interrupted(tmp_path / "b", "cpu_ddp")
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-6), step


@pytest.mark.slow
def test_resume_on_a_different_world_size_continues_the_stream(tmp_path):
    base = FAST + ["debug.record_indices=true", "max_steps=6"]
    straight = train(tmp_path / "a", base)
    assert straight.returncode == 0, straight.log[-3000:]
    two = train(tmp_path / "b", base + ["debug.preempt_at_step=2"], backend="cpu_ddp")
    assert (two.run_dir / "checkpoints" / "step-00000002" / "COMPLETE").is_file()
    one = train(tmp_path / "b", base)  # requeued onto a single process
    assert one.returncode == 0, one.log[-3000:]
    want = straight.indices()[0]
    got = one.indices()  # rank0.jsonl holds both runs' rank-0 lines; rank1.jsonl the 2-rank part
    for step in range(1, 7):
        merged = got[0][step] + (got[1][step] if step <= 2 else [])
        assert merged == want[step], step


@pytest.mark.slow
def test_kill_9_during_save_resumes_from_previous_valid_checkpoint(tmp_path):
    base = FAST + ["max_steps=6", "checkpoint.every_steps=2", "checkpoint.keep_last=3"]
    killed = train(tmp_path, base + ["debug.kill_during_save_step=4"])
    assert killed.returncode == -9
    ckpts = killed.run_dir / "checkpoints"
    assert (ckpts / "step-00000002" / "COMPLETE").is_file()
    assert (ckpts / ".tmp-step-00000004").is_dir()  # written but never published
    assert not (ckpts / "step-00000004").exists()
    again = train(tmp_path, base)
    assert again.returncode == 0, again.log[-3000:]
    assert re.search(r"resumed from \S+step-00000002 at step 2", again.log)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000002", "step-00000004", "step-00000006"]
