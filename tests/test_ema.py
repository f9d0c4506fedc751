"""EMA in a real run: the averaged weights follow the closed form, and validation uses them."""

from __future__ import annotations

import json

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.losses import nmse
from ris_dist.model import build_model, model_config
from ris_dist.physics import simulate
from ris_dist.train.checkpoint import load_weights
from ris_dist.train.config import load_train_config

from trainrun import FAST, checkpoint_custom, checkpoint_model, train

DECAY = 0.5
STEPS = 4
EMA_INDEX = 1  # registered for checkpointing after the scheduler (0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = train(tmp_path_factory.mktemp("ema"), FAST + [
        "mode=standard", "ema.enabled=true", f"ema.decay={DECAY}", f"max_steps={STEPS}", "val.every_steps=2",
        "checkpoint.every_steps=1", "checkpoint.keep_last=10"])
    assert run.returncode == 0, run.log[-3000:]
    return run


def ema_weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    state = checkpoint_custom(run_dir, step, EMA_INDEX)
    assert int(state["n_averaged"]) == step
    return {k.removeprefix("module."): v for k, v in state.items() if k.startswith("module.")}


@pytest.mark.slow
def test_ema_is_the_decay_weighted_average_of_the_live_weights(run):
    live = {s: checkpoint_model(run.run_dir, s) for s in range(1, STEPS + 1)}
    for n in range(1, STEPS + 1):
        got = ema_weights(run.run_dir, n)
        assert got.keys() == live[n].keys()
        # The first update copies the weights; each later one is ema ← d·ema + (1 − d)·live.
        coeff = {1: DECAY ** (n - 1), **{k: (1 - DECAY) * DECAY ** (n - k) for k in range(2, n + 1)}}
        assert sum(coeff.values()) == pytest.approx(1.0)
        for name in got:
            want = sum(c * live[k][name].double() for k, c in coeff.items())
            torch.testing.assert_close(got[name].double(), want, rtol=1e-5, atol=1e-6, msg=f"step {n} {name}")
        if n > 1:
            assert any(not torch.equal(got[k], live[n][k]) for k in got), f"step {n}: EMA equals the live model"


def _val_nmse(run_dir, weights: dict[str, torch.Tensor]) -> float:
    cfg = load_train_config(run_dir / "config.yaml")
    system = load_system(cfg.system)
    model = build_model(system, model_config("tiny"))
    model.load_state_dict(weights)
    model.eval()
    batch = simulate(system, torch.arange(cfg.data.val_scenes), cfg.data.seed, cfg.data.val_split)
    assert cfg.beta.end == 0.0  # R_eff = R_pred
    with torch.no_grad():
        out = model(batch.y, batch.H, batch.codes, batch.snr_db)
    return float(nmse(out.R_pred, batch.R_true).mean())


@pytest.mark.slow
def test_validation_and_best_use_the_ema_weights(run):
    val = run.records("val")
    assert sorted(val) == [2, 4]
    for step in (2, 4):
        on_ema = _val_nmse(run.run_dir, ema_weights(run.run_dir, step))
        on_live = _val_nmse(run.run_dir, checkpoint_model(run.run_dir, step))
        assert val[step]["nmse"] == pytest.approx(on_ema, rel=1e-5), step
        assert abs(on_live - on_ema) > 1e-3 * on_ema, step  # the two are told apart
    best = json.loads((run.run_dir / "best" / "meta.json").read_text())["step"]
    saved = load_weights(run.run_dir / "best")
    for name, value in ema_weights(run.run_dir, best).items():
        assert torch.equal(saved[name], value), name
