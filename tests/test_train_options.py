"""Optional training features on one process: bf16 autocast, EMA and SWA, grad accumulation."""

import json

import pytest

from trainrun import FAST, train


@pytest.mark.slow
def test_bf16_ema_swa_and_accumulation_run_and_are_saved(tmp_path):
    run = train(tmp_path, FAST + ["mode=standard", "max_steps=4", "amp.dtype=bf16", "ema.enabled=true",
                                  "ema.decay=0.9", "swa.enabled=true", "swa.start_step=2",
                                  "optim.grad_accum_steps=2", "checkpoint.every_steps=2", "debug.record_indices=true"])
    assert run.returncode == 0, run.log[-3000:]
    train_log = run.records("train")
    assert train_log[4]["real_steps"] == 4 and all(r["stepped"] for r in train_log.values())
    assert all(r["delta_param"] > 0 for r in train_log.values())
    # Each step consumed two global micro-batches of the stream, except the one that ends an epoch
    # (96 scenes: 64 + 32): one record per micro-batch, 32 scenes each.
    micro = {}
    for line in (run.run_dir / "indices" / "rank0.jsonl").read_text().splitlines():
        r = json.loads(line)
        micro.setdefault(r["step"], []).append(r["indices"])
    assert {step: [len(m) for m in ms] for step, ms in micro.items()} == {1: [32, 32], 2: [32], 3: [32, 32], 4: [32]}
    for epoch_steps in ((1, 2), (3, 4)):
        seen = sorted(i for step in epoch_steps for m in micro[step] for i in m)
        assert seen == list(range(96)), epoch_steps
    for folder in ("best", "swa"):
        assert (run.run_dir / folder / "model.pt").is_file()
    ckpt = run.run_dir / "checkpoints" / "step-00000004"
    state = json.loads((ckpt / "trainer_state.json").read_text())["trainer"]
    # 96 scenes per epoch, 2 micro-batches of 32 per step, and a step never spans two epochs:
    # steps take 64 + 32 (epoch end) + 64 + 32 scenes, so step 4 ends epoch 1.
    assert (state["epoch"], state["position"]) == (1, 96)
    assert len(list(ckpt.glob("custom_checkpoint_*.pkl"))) == 3  # scheduler, EMA, SWA


@pytest.mark.slow
def test_pure_overfit_violation_exits_2_with_the_key(tmp_path):
    run = train(tmp_path, FAST + ["max_steps=1", "loss.weights.lam_k=0.1"])
    assert run.returncode == 2
    assert run.log.strip().splitlines()[-1] == (
        "error: configs/phase0.yaml: mode=pure_overfit: loss.weights.lam_k must be 0 (got 0.1)")
