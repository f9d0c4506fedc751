"""Phase 1–3 mechanisms in real runs of the shipped phase configs (one CPU process, tiny system).

Each expectation is written here in closed form or recomputed from the run's own artifacts
(checkpoints, metrics.jsonl), never taken from the trainer's helpers:
- phase 2: the backbone is frozen (bit-identical) for ``backbone_warm_steps`` steps, then moves;
  the ramped K weight follows its ramp;
- phase 3: ``auto_weights`` gives each calibrated term its target share of the loss on the
  calibration batch, ramps start, rise and plateau at their steps, and a resumed run keeps the
  calibrated weights instead of recomputing them;
- early stopping stops at ``val.patience`` validations without improvement.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.losses import LossWeights, compute_loss
from ris_dist.model import build_model, model_config
from ris_dist.physics import simulate
from ris_dist.train.checkpoint import load_weights, save_weights
from ris_dist.train.config import load_train_config

from trainrun import FAST, checkpoint_model, train

pytestmark = pytest.mark.slow

#: Small localization validation: phases 1-3 need val.localize and val.at_start for their gates.
SMALL = FAST + ["data.train_scenes=256", "data.batch_size=16", "data.val_scenes=16", "data.val_batch_size=16",
                "val.image_scenes=0", "val.patience=0"]
FREEZE_STEPS = 3
P3_RAMPS = {"lam_subspace": (0, 3), "lam_ortho": (2, 2), "lam_gap": (4, 1)}  # name: (start_step, ramp_steps)


def ramp(step: int, start: int, length: int) -> float:
    """The documented ramp: 0 before start_step, then (step − start + 1)/ramp_steps, capped at 1."""
    if step < start:
        return 0.0
    return 1.0 if length == 0 else min(1.0, (step - start + 1) / length)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    """A best/ folder holding a seeded tiny model: what phases 1-3 start from (init_from)."""
    cfg = model_config("tiny")
    torch.manual_seed(123)
    model = build_model(load_system("tiny"), cfg)
    path = tmp_path_factory.mktemp("init") / "best"
    save_weights(path, model.state_dict(), {"step": 0, "metrics": {}, "system": "tiny", "system_overrides": {},
                                            "model": dataclasses.asdict(cfg)})
    return path


def _model(weights: dict[str, torch.Tensor]):
    model = build_model(load_system("tiny"), model_config("tiny"))
    model.load_state_dict(weights)
    return model


def _backbone_names() -> tuple[set[str], set[str]]:
    model = build_model(load_system("tiny"), model_config("tiny"))
    head_ids = {id(p) for p in model.head_parameters()}
    backbone = {n for n, p in model.named_parameters() if id(p) not in head_ids}
    head = {n for n, p in model.named_parameters() if id(p) in head_ids}
    return backbone, head


# ---- phase 2: frozen backbone, K-loss ramp ---------------------------------------------------
@pytest.fixture(scope="module")
def phase2(init_dir, tmp_path_factory):
    run = train(tmp_path_factory.mktemp("p2"), SMALL + [
        f"init_from={init_dir}", "max_steps=5", f"optim.backbone_warm_steps={FREEZE_STEPS}",
        "checkpoint.every_steps=1", "checkpoint.keep_last=10"], config="configs/phase2.yaml")
    assert run.returncode == 0, run.log[-3000:]
    return run


def test_phase2_backbone_is_frozen_then_moves(phase2, init_dir):
    cfg = load_train_config(phase2.run_dir / "config.yaml")
    assert cfg.optim.backbone_lr_mult_initial == 0.0  # the shipped phase-2 setting under test
    backbone, head = _backbone_names()
    snaps = {0: load_weights(init_dir), **{s: checkpoint_model(phase2.run_dir, s) for s in range(1, 6)}}

    def moved(step: int, names: set[str]) -> set[str]:
        return {n for n in names if not torch.equal(snaps[step][n], snaps[step - 1][n])}

    for step in range(1, FREEZE_STEPS + 1):
        assert moved(step, backbone) == set(), f"step {step}: frozen backbone parameters changed"
        assert moved(step, head), f"step {step}: the heads did not train"
    for step in (FREEZE_STEPS + 1, FREEZE_STEPS + 2):
        assert len(moved(step, backbone)) > len(backbone) // 2, f"step {step}: the backbone did not unfreeze"
    lrs = phase2.records("train")
    assert [lrs[s]["lr_backbone"] for s in range(1, FREEZE_STEPS)] == [0.0] * (FREEZE_STEPS - 1)
    assert all(lrs[s]["lr_head"] > 0 for s in range(1, 6))


def test_phase2_k_weight_follows_its_ramp(phase2):
    cfg = load_train_config(phase2.run_dir / "config.yaml")
    lam_k, r = cfg.loss.weights.lam_k, cfg.ramps["lam_k"]
    assert lam_k > 0 and r.ramp_steps > 5  # still ramping over these 5 steps
    logged = phase2.records("loss")
    for step in range(1, 6):
        want = lam_k * ramp(step, r.start_step, r.ramp_steps)
        assert logged[step]["lam_k"] == pytest.approx(want, rel=1e-12), step
        assert logged[step]["lam_cov"] == cfg.loss.weights.lam_cov


# ---- phase 3: auto_weights, ramps, resume ------------------------------------------------------
def _p3_overrides(init_dir, max_steps: int) -> list[str]:
    ramps = ", ".join(f"{n}: {{start_step: {a}, ramp_steps: {b}}}" for n, (a, b) in P3_RAMPS.items())
    return SMALL + [f"init_from={init_dir}", f"max_steps={max_steps}", f"ramps={{{ramps}}}"]


@pytest.fixture(scope="module")
def phase3(init_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("p3")
    first = train(out, _p3_overrides(init_dir, 3), config="configs/phase3.yaml")
    assert first.returncode == 0, first.log[-3000:]
    calibrated = json.loads((first.run_dir / "weights.json").read_text())
    resumed = train(out, _p3_overrides(init_dir, 6), config="configs/phase3.yaml")
    assert resumed.returncode == 0, resumed.log[-3000:]
    return first, resumed, calibrated


def test_auto_weights_give_each_term_its_share_on_the_calibration_batch(phase3, init_dir):
    first, _, calibrated = phase3
    cfg = load_train_config(first.run_dir / "config.yaml")
    assert set(cfg.auto_weights) == {"lam_subspace", "lam_ortho", "lam_gap"}
    system = load_system(cfg.system)
    # The calibration batch: the first min(val_scenes, 128) validation scenes, at the model it starts from.
    batch = simulate(system, torch.arange(min(cfg.data.val_scenes, 128)), cfg.data.seed, cfg.data.val_split)
    model = _model(load_weights(init_dir))
    with torch.no_grad():
        out = model(batch.y, batch.H, batch.codes, batch.snr_db)
    res = compute_loss(out, batch, system, cfg.beta.end, cfg.loss, LossWeights(**calibrated))
    total = float(res.total)
    for name, frac in cfg.auto_weights.items():
        share = float(res.weighted[name.removeprefix("lam_")]) / total
        assert share == pytest.approx(frac, rel=1e-4), name
    assert calibrated["lam_cov"] == 1.0 and calibrated["lam_k"] == 0.5  # explicit weights stay as set
    assert "[WEIGHTS] resolved" in first.log


def test_phase3_ramps_start_rise_and_plateau(phase3):
    first, resumed, calibrated = phase3
    logged = {**first.records("loss"), **resumed.records("loss")}
    assert sorted(logged) == list(range(1, 7))
    for name, (start, length) in P3_RAMPS.items():
        for step in range(1, 7):
            want = calibrated[name] * ramp(step, start, length)
            assert logged[step][name] == pytest.approx(want, rel=1e-12), (name, step)
    # the closed form has each phase of a ramp in these six steps: before, rising, at 1
    assert logged[1]["lam_ortho"] == 0.0 and 0 < logged[2]["lam_ortho"] < logged[3]["lam_ortho"]
    assert logged[3]["lam_subspace"] == logged[6]["lam_subspace"] == calibrated["lam_subspace"]


def test_resume_restores_calibrated_weights_instead_of_recomputing(phase3):
    first, resumed, calibrated = phase3
    assert "resumed from" in resumed.log and "at step 3" in resumed.log
    assert "[WEIGHTS] resolved" not in resumed.log
    assert json.loads((resumed.run_dir / "weights.json").read_text()) == calibrated
    state = json.loads((resumed.run_dir / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["trainer"]["base_weights"] == calibrated
    # A recalibration at the resume point would give other weights: the check above can fail.
    cfg = load_train_config(first.run_dir / "config.yaml")
    system = load_system(cfg.system)
    batch = simulate(system, torch.arange(min(cfg.data.val_scenes, 128)), cfg.data.seed, cfg.data.val_split)
    with torch.no_grad():
        out = _model(checkpoint_model(first.run_dir, 3))(batch.y, batch.H, batch.codes, batch.snr_db)
    res = compute_loss(out, batch, system, cfg.beta.end, cfg.loss, LossWeights(**calibrated))
    shares = {n: float(res.weighted[n.removeprefix("lam_")]) / float(res.total) for n in cfg.auto_weights}
    assert any(abs(shares[n] - f) > 1e-4 * f for n, f in cfg.auto_weights.items()), shares


# ---- early stopping ----------------------------------------------------------------------------
def test_early_stopping_at_patience(tmp_path):
    # min_delta = 1e9: no validation can beat the first one, so each one counts towards patience.
    run = train(tmp_path, FAST + ["max_steps=20", "val.at_start=true", "val.every_steps=1", "val.patience=2",
                                  "val.min_delta=1e9"])
    assert run.returncode == 0, run.log[-3000:]
    assert sorted(run.records("val")) == [0, 1, 2]
    assert max(run.records("train")) == 2
    assert "[DIGEST] rank=0 step=2 " in run.log
    assert json.loads((run.run_dir / "gate.json").read_text())["best_step"] == 0


# ---- grad_clip under DDP -------------------------------------------------------------------------
# AdamW with betas (0, 0) and eps ≫ |g| updates each parameter by lr·g/(|g| + eps) ≈ (lr/eps)·g, so the
# applied update's norm is (lr/eps) times the norm of the gradient the optimizer saw: after clipping.
SGD_LIKE = ["optim.lr=1.0e4", "optim.eps=1.0e4", "optim.betas=[0.0, 0.0]", "optim.head_lr_mult=1.0",
            "optim.warmup_steps=0", "max_steps=2"]
CLIP = 0.05


@pytest.fixture(scope="module")
def ddp_clip_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    runs = {}
    for name, clip in (("binding", CLIP), ("loose", 1.0e6)):
        run = train(out / name, FAST + SGD_LIKE + [f"optim.grad_clip={clip}"], backend="cpu_ddp")
        assert run.returncode == 0, run.log[-3000:]
        runs[name] = run.records("train")
    return runs


def _applied_grad_norms(records: dict[int, dict]) -> dict[int, tuple[float, float]]:
    """step -> (gradient norm the update applied, the gate's pre-clip global norm)."""
    lr_used = {1: 1.0e4, 2: records[1]["lr_backbone"]}  # the scheduler ticks after each real step
    return {s: (records[s]["delta_param"] * 1.0e4 / lr_used[s], records[s]["grad_norm"]) for s in (1, 2)}


def test_ddp_grad_clip_binds_at_the_clip(ddp_clip_runs):
    for step, (applied, pre_clip) in _applied_grad_norms(ddp_clip_runs["binding"]).items():
        assert pre_clip > 2 * CLIP, (step, pre_clip)  # the clip is binding
        assert applied == pytest.approx(CLIP, rel=2e-3), step


def test_ddp_grad_clip_leaves_a_smaller_norm_alone(ddp_clip_runs):
    for step, (applied, pre_clip) in _applied_grad_norms(ddp_clip_runs["loose"]).items():
        assert applied == pytest.approx(pre_clip, rel=2e-3), step
