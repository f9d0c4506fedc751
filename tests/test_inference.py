"""ris_dist.Localizer: loading a best/ folder, the one R_eff path, K sources, clear errors; viz slices."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ris_dist.config import load_system
from ris_dist.covariance import effective_covariance
from ris_dist.localize import Estimates, localize
from ris_dist.model import build_model, model_config
from ris_dist.physics import sample_covariance, simulate
from ris_dist.train.checkpoint import CheckpointError, save_weights

BETA = 0.25


def make_checkpoint(path: Path, **meta_extra) -> Path:
    """A best/ folder like the trainer writes, from a freshly built (untrained) tiny model."""
    system = load_system("tiny")
    cfg = model_config("tiny")
    torch.manual_seed(0)
    model = build_model(system, cfg)
    meta = {"step": 0, "metrics": {}, "system": "tiny", "system_overrides": {}, "model": dataclasses.asdict(cfg),
            **meta_extra}
    save_weights(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("run") / "best", beta=BETA, k_source="head")


@pytest.fixture(scope="module")
def loc(ckpt):
    from ris_dist import Localizer

    return Localizer.from_checkpoint(ckpt)


@pytest.fixture(scope="module")
def batch(loc):
    return simulate(loc.system, range(12), 0, "test")


def test_import_is_light_and_exports_localizer():
    code = ("import sys, ris_dist; assert 'torch' not in sys.modules, 'import ris_dist pulled in torch'; "
            "from ris_dist import Localizer; from ris_dist.inference import Localizer as L; assert Localizer is L")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_meta_is_read(loc):
    assert loc.system == load_system("tiny")
    assert loc.beta == BETA and loc.k_source == "head"
    assert not loc.model.training


def test_defaults_without_beta_and_k_source(tmp_path):
    from ris_dist import Localizer

    loc = Localizer.from_checkpoint(make_checkpoint(tmp_path / "best"))
    assert loc.beta == 0.0 and loc.k_source == "head"


def test_estimates_shapes_and_head_k(loc, batch):
    est = loc(batch.y, batch.H, batch.codes, batch.snr_db)
    B, kmax = len(batch), loc.system.max_sources
    assert isinstance(est, Estimates)
    for t in (est.azimuth_deg, est.elevation_deg, est.range_m, est.valid):
        assert t.shape == (B, kmax)
    assert est.num_sources.shape == (B,)
    with torch.no_grad():
        logits = loc.model(batch.y, batch.H, batch.codes, batch.snr_db).k_logits
    assert torch.equal(est.num_sources, logits.argmax(-1) + 1)
    assert torch.equal(loc.num_sources(batch.y, batch.H, batch.codes, batch.snr_db), est.num_sources)
    assert torch.equal(est.valid.sum(-1), est.num_sources)


def test_r_eff_goes_through_the_one_builder(loc, batch):
    R_eff = loc.covariance(batch.y, batch.H, batch.codes, batch.snr_db)
    with torch.no_grad():
        R_pred = loc.model(batch.y, batch.H, batch.codes, batch.snr_db).R_pred
    R_samp = sample_covariance(loc.system, batch.y, batch.H, batch.codes)
    assert torch.equal(R_eff, effective_covariance(R_pred, R_samp, BETA))
    # and MUSIC sees exactly that matrix
    est = loc(batch.y, batch.H, batch.codes, batch.snr_db, num_sources=batch.num_sources)
    ref = localize(R_eff, loc.system, num_sources=batch.num_sources)
    assert torch.equal(est.azimuth_deg, ref.azimuth_deg) and torch.equal(est.range_m, ref.range_m)


def test_oracle_k_is_honoured(loc, batch):
    k = torch.tensor([1, 2] * (len(batch) // 2))
    est = loc(batch.y, batch.H, batch.codes, batch.snr_db, num_sources=k)
    assert torch.equal(est.num_sources, k) and torch.equal(est.valid.sum(-1), k)


def test_k_source_mdl(tmp_path, batch):
    from ris_dist import Localizer

    loc = Localizer.from_checkpoint(make_checkpoint(tmp_path / "best", beta=0.5, k_source="mdl"))
    est = loc(batch.y, batch.H, batch.codes, batch.snr_db)
    R_eff = loc.covariance(batch.y, batch.H, batch.codes, batch.snr_db)
    ref = localize(R_eff, loc.system, num_sources=None, order_method="mdl")
    assert loc.k_source == "mdl" and torch.equal(est.num_sources, ref.num_sources)
    assert ((est.num_sources >= 1) & (est.num_sources <= loc.system.max_sources)).all()


def test_oracle_meta_and_k_source_override(tmp_path, caplog):
    from ris_dist import Localizer

    best = make_checkpoint(tmp_path / "best", k_source="oracle")
    assert Localizer.from_checkpoint(best).k_source == "head"
    assert "k_source: oracle" in caplog.text
    assert Localizer.from_checkpoint(best, k_source="mdl").k_source == "mdl"


def test_scalar_snr_and_dtype_and_shape_checks(loc, batch):
    one = batch.select(slice(0, 2))
    est = loc(one.y.to(torch.complex128), one.H, one.codes, float(one.snr_db[0]))
    assert est.azimuth_deg.shape == (2, loc.system.max_sources)
    with pytest.raises(ValueError, match="H: expected"):
        loc(one.y, one.H[:, :3], one.codes, one.snr_db)


def _one_line_error(path: Path, match: str) -> str:
    from ris_dist import Localizer

    with pytest.raises(CheckpointError) as info:
        Localizer.from_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and match in msg, msg
    return msg


def test_missing_folder_and_files(tmp_path):
    _one_line_error(tmp_path / "nope", "no such checkpoint folder")
    best = make_checkpoint(tmp_path / "a" / "best")
    (best / "model.pt").unlink()
    _one_line_error(best, "model.pt")
    best = make_checkpoint(tmp_path / "b" / "best")
    (best / "meta.json").unlink()
    _one_line_error(best, "meta.json")


def test_corrupt_files(tmp_path):
    best = make_checkpoint(tmp_path / "a" / "best")
    (best / "model.pt").write_bytes(b"not a zip file at all")
    _one_line_error(best, "model.pt")
    best = make_checkpoint(tmp_path / "b" / "best")
    (best / "meta.json").write_text("{ truncated")
    _one_line_error(best, "meta.json")
    best = make_checkpoint(tmp_path / "c" / "best", beta=1.5)
    _one_line_error(best, "beta")
    best = make_checkpoint(tmp_path / "d" / "best", k_source="aic")
    _one_line_error(best, "k_source")


def test_weights_that_do_not_fit_the_meta(tmp_path):
    best = make_checkpoint(tmp_path / "best")
    meta = json.loads((best / "meta.json").read_text())
    meta["model"]["width"] = 32  # the weights were saved for width 64
    (best / "meta.json").write_text(json.dumps(meta))
    _one_line_error(best, "weights do not fit")
    meta["model"]["heads"] = 5  # an invalid model config names meta.json
    (best / "meta.json").write_text(json.dumps(meta))
    _one_line_error(best, "meta.json")


def test_music_spectrum_slices(loc, batch):
    from ris_dist.viz import music_spectrum_slices, scene_sources

    i = int(torch.nonzero(batch.num_sources == 2)[0])
    est = localize(batch.R_true, loc.system, num_sources=batch.num_sources)
    truth = scene_sources(batch, i)
    img = music_spectrum_slices(batch.R_true[i], loc.system, truth, scene_sources(est, i),
                                true_powers=batch.powers[i][batch.valid[i]].numpy())
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) > 100
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # a rendered colour map, not a blank canvas
    # red estimate circles are drawn
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    assert red.sum() > 20
    # a model R_eff (any device, with grad history detached) and an estimate-free scene also render
    R_eff = loc.covariance(batch.y, batch.H, batch.codes, batch.snr_db)
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    assert music_spectrum_slices(R_eff[i], loc.system, truth, empty).shape == img.shape
    with pytest.raises(ValueError, match="truth"):
        music_spectrum_slices(R_eff[i], loc.system, empty, empty)


def test_success_rule_from_meta_and_map_override(tmp_path, batch):
    from ris_dist import Localizer
    from ris_dist.localize import SuccessTable

    # q_2 ≈ 0 in every bin: the expected-success rule reports one source wherever p(K=1) > 1e-4.
    table = SuccessTable((-5.0, 20.0), ((0.5, 1e-5),), ((10, 10),))
    loc = Localizer.from_checkpoint(make_checkpoint(tmp_path / "best", k_decision="success",
                                                    k_success_table=table.to_json()))
    assert loc.k_decision == "success" and loc.success_table == table
    _, logits = loc._forward(batch.y, batch.H, batch.codes, batch.snr_db)
    ones = torch.ones(len(batch), dtype=torch.int64)
    assert torch.equal(loc.num_sources(batch.y, batch.H, batch.codes, batch.snr_db), ones)
    assert torch.equal(loc(batch.y, batch.H, batch.codes, batch.snr_db).num_sources, ones)
    est_map = loc(batch.y, batch.H, batch.codes, batch.snr_db, k_decision="map")
    assert torch.equal(est_map.num_sources, logits.argmax(-1) + 1)


@pytest.mark.parametrize("meta, key", [
    ({"k_decision": "vote"}, "k_decision"),
    ({"k_decision": "success"}, "k_success_table"),
    ({"k_decision": "success", "k_success_table": {"snr_edges_db": [0, 5], "rate": [[2.0, 0.1]],
                                                    "num_scenes": [[1, 1]]}}, "k_success_table"),
    ({"k_decision": "success", "k_success_table": {"snr_edges_db": [0, 5], "rate": [[0.5, 0.1, 0.1]],
                                                    "num_scenes": [[1, 1, 1]]}}, "k_success_table"),
])
def test_bad_k_decision_meta_is_one_line(tmp_path, meta, key):
    msg = _one_line_error(make_checkpoint(tmp_path / "best", **meta), key)
    assert "meta.json" in msg
