"""The curriculum recipes (tiny, full, full-lite) and the init_from system check."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ris_dist.config import ConfigError, load_system
from ris_dist.launch.recipe import RECIPES, check_recipe, recipe_config
from ris_dist.model import build_model, model_config
from ris_dist.train import checkpoint as ckpt
from ris_dist.train.config import load_train_config

from trainrun import train

#: recipe -> (system, model preset) every one of its phases trains
EXPECTED = {"tiny": ("tiny", "tiny"), "full": ("full", "full"), "full-lite": ("full", "full-lite")}
#: recipe -> (phase-0 NMSE gate, phase-1 K̂ source, phases 2-3 RMSE K̂), docs/full_recipe.md
GATES = {"tiny": (0.1, "mdl", "own"), "full": (0.1, "oracle", "oracle"), "full-lite": (0.5, "oracle", "oracle")}


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_phases_chain_on_one_system(recipe):
    system_name, preset = EXPECTED[recipe]
    cfgs = [load_train_config(recipe_config(recipe, p), []) for p in range(4)]
    for p, cfg in enumerate(cfgs):
        assert (cfg.phase, cfg.system) == (f"phase{p}", system_name)
        assert cfg.model == model_config(preset, dropout=0.0)
        if p:
            assert (cfg.init_from, cfg.previous_phase) == ("auto", f"phase{p - 1}")
            assert cfg.beta.localize == 0.5 and cfg.val.localize and cfg.val.primary == "k_loc"
    p0 = cfgs[0]
    max_nmse, phase1_k, rmse_k = GATES[recipe]
    assert p0.mode == "pure_overfit" and p0.gate.max_val_nmse == max_nmse
    assert (p0.data.train_scenes, p0.data.val_scenes, p0.data.val_split) == (512, 512, p0.data.train_split)
    assert cfgs[1].val.k_source == phase1_k
    assert all(c.val.k_source == "head" and c.val.k_decision == "success" for c in cfgs[2:])
    assert all(c.gate.rmse_k == rmse_k for c in cfgs[2:])


def test_full_recipe_covers_k_max_5_and_resolves_gates():
    assert load_system("full").max_sources == 5
    for p in (1, 2, 3):
        cfg = load_train_config(recipe_config("full", p), [])
        # the gates tolerate 0.01: the worst-case binomial SE of a rate must be below it
        assert (0.25 / cfg.data.val_scenes) ** 0.5 < 0.01
        assert cfg.data.batch_size % 16 == 0  # divides evenly over 2 nodes x 8 GPUs


def test_full_lite_preset_is_small_and_fits_k_max():
    system = load_system("full")
    cfg = model_config("full-lite")
    assert cfg.rank >= system.max_sources
    counts = build_model(system, cfg).count_parameters()
    total = counts["backbone"] + counts["head"]
    assert 1.0e6 < total < 2.0e6, counts  # ~1.3M: a twelfth of full's 15.7M


def test_unknown_recipe_is_one_line_listing_the_known():
    with pytest.raises(ConfigError) as err:
        check_recipe("huge")
    msg = str(err.value)
    assert "\n" not in msg and "'huge'" in msg and all(name in msg for name in RECIPES)


def _best(path, system: str, preset: str, **model_overrides):
    """A best/ folder as the trainer writes it (real weights, real meta keys)."""
    torch.manual_seed(0)
    cfg = model_config(preset, **model_overrides)
    model = build_model(load_system(system), cfg)
    ckpt.save_weights(path, model.state_dict(), {"step": 1, "system": system, "system_overrides": {},
                                                 "model": dataclasses.asdict(cfg)})
    return path


def _error_line(run) -> str:
    lines = run.log.strip().splitlines()
    assert run.returncode == 2, run.log[-2000:]
    assert lines[-1].startswith("error: "), lines[-3:]
    return lines[-1]


@pytest.mark.slow
def test_tiny_checkpoint_into_full_run_names_both_systems(tmp_path):
    best = _best(tmp_path / "tiny_best", "tiny", "tiny")
    run = train(tmp_path / "runs", [f"init_from={best}", "max_steps=1", "log.progress_bar=false"],
                config="configs/full-lite/phase1.yaml", timeout=300)
    line = _error_line(run)
    assert "system 'tiny' (N=16" in line and "system 'full' (N=144" in line, line
    assert not (tmp_path / "runs" / "t" / "phase1" / "metrics.jsonl").exists()  # refused before training


@pytest.mark.slow
def test_full_checkpoint_into_tiny_run_names_both_systems(tmp_path):
    best = _best(tmp_path / "full_best", "full", "full-lite")
    run = train(tmp_path / "runs", [f"init_from={best}", "max_steps=1", "log.progress_bar=false"],
                config="configs/phase1.yaml", timeout=300)
    line = _error_line(run)
    assert "system 'full' (N=144" in line and "system 'tiny' (N=16" in line, line


def test_shape_mismatch_on_the_same_system_is_one_line(tmp_path):
    best = _best(tmp_path / "narrow", "tiny", "tiny", width=64, heads=4)
    model = build_model(load_system("tiny"), model_config("tiny"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_init(model, best, load_system("tiny"))
    msg = str(err.value)
    assert "\n" not in msg and "weights do not fit this model" in msg and "(this model: " in msg, msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_matching_checkpoint_loads_exactly(tmp_path):
    best = _best(tmp_path / "same", "tiny", "tiny")
    torch.manual_seed(1)
    model = build_model(load_system("tiny"), model_config("tiny"))
    ckpt.load_init(model, best, load_system("tiny"))
    saved = ckpt.load_weights(best)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_missing_or_bad_meta_is_one_line(tmp_path):
    best = _best(tmp_path / "b", "tiny", "tiny")
    system = load_system("tiny")
    (best / "meta.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(ckpt.CheckpointError, match="key 'system' is missing"):
        ckpt.check_system(best, system)
    (best / "meta.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="meta.json: missing"):
        ckpt.check_system(best, system)


def test_bench_system_option_trains_that_system_and_preset():
    from ris_dist.bench.scaling import system_overrides

    assert system_overrides("", "") == []  # the phase config's own system and preset
    for system, preset, want in (("full", "", "full"), ("full", "full-lite", "full-lite")):
        cfg = load_train_config("configs/phase0.yaml", system_overrides(system, preset))
        assert cfg.system == "full"
        assert cfg.model == model_config(want, dropout=0.0)
