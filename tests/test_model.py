"""CovarianceNet: valid covariances, parameter budget, it trains, and it runs under bf16 autocast."""

from __future__ import annotations

import contextlib

import pytest
import torch

from ris_dist.config import ConfigError, build, load_system
from ris_dist.losses import LossConfig, LossWeights, compute_loss, nmse
from ris_dist.model import MODEL_PRESETS, ModelConfig, ModelOutput, build_model, model_config
from ris_dist.model.net import second_order_features
from ris_dist.physics import sample_covariance, simulate


@contextlib.contextmanager
def _threads(n: int):
    # The CPU box is shared; one thread avoids oversubscription stalls (10x slower steps).
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(scope="module")
def batch(system):
    return simulate(system, range(64), seed=7, split="train")


def _model(system, preset="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model(system, model_config(preset, **overrides))


def _check_covariance(R: torch.Tensor, N: int) -> None:
    assert R.dtype == torch.complex64 and R.shape[-2:] == (N, N)
    assert torch.isfinite(R).all()
    torch.testing.assert_close(R, R.mH, rtol=0, atol=1e-6)
    tr = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)
    torch.testing.assert_close(tr, torch.full_like(tr, float(N)), rtol=1e-5, atol=1e-4)
    assert torch.linalg.eigvalsh(R).min().item() >= -1e-5 * N


def test_output_is_hermitian_psd_trace_n(system, batch):
    m = _model(system).eval()
    with torch.no_grad():
        out = m(batch.y, batch.H, batch.codes, batch.snr_db)
    assert isinstance(out, ModelOutput)
    _check_covariance(out.R_pred, 16)
    assert out.k_logits.shape == (64, system.max_sources) and out.k_logits.dtype == torch.float32
    assert out.factor.shape == (64, 16, MODEL_PRESETS["tiny"]["rank"])


def test_input_scale_invariance(system, batch):
    """y is RMS-normalized per scene: a 30 dB change in received power changes nothing."""
    m = _model(system).eval()
    with torch.no_grad():
        a = m(batch.y, batch.H, batch.codes, batch.snr_db)
        b = m(batch.y * 31.6, batch.H, batch.codes, batch.snr_db)
    torch.testing.assert_close(a.R_pred, b.R_pred, rtol=1e-4, atol=1e-4)


def test_second_order_features_match_physics(system, batch):
    """The model's in-forward R_samp is exactly physics.sample_covariance; the features are scale-free."""
    f = second_order_features(system, batch.y, batch.H, batch.codes, batch.snr_db)
    ref = sample_covariance(system, batch.y, batch.H, batch.codes)
    torch.testing.assert_close(f["R_samp"], ref, rtol=1e-4, atol=1e-4)
    g = second_order_features(system, batch.y * 31.6, batch.H * 0.1, batch.codes, batch.snr_db)
    for key in f:
        torch.testing.assert_close(f[key], g[key], rtol=1e-3, atol=1e-3)
    # The back-projected noise (on R_samp's scale, from σ̂²): positive, larger at lower SNR.
    tr = torch.diagonal(f["noise"], dim1=-2, dim2=-1).real.sum(-1)
    assert (tr > 0).all()
    lo, hi = batch.snr_db < 0, batch.snr_db > 15
    assert tr[lo].mean() > tr[hi].mean()


def test_r_pred_is_the_normalized_factor_product(system, batch):
    """R_pred = N·F F^H / ‖F‖²_F with the returned factor F [B, N, r]."""
    m = _model(system).eval()
    with torch.no_grad():
        out = m(batch.y[:4], batch.H[:4], batch.codes[:4], batch.snr_db[:4])
    torch.testing.assert_close(out.R_pred, system.num_elements * out.factor @ out.factor.mH
                               / (out.factor.abs() ** 2).sum(dim=(-2, -1))[:, None, None], rtol=1e-4, atol=1e-4)


def test_bf16_autocast_forward(system, batch):
    m = _model(system).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(batch.y, batch.H, batch.codes, batch.snr_db)
    _check_covariance(out.R_pred, 16)
    assert out.k_logits.dtype == torch.float32
    with torch.no_grad():
        ref = m(batch.y, batch.H, batch.codes, batch.snr_db)
    assert nmse(out.R_pred, ref.R_pred).mean().item() < 0.1  # bf16 rounding, not garbage


def test_parameter_groups_and_counts(system):
    m = _model(system)
    back, head = m.backbone_parameters(), m.head_parameters()
    ids_b, ids_h = {id(p) for p in back}, {id(p) for p in head}
    assert not ids_b & ids_h and ids_b | ids_h == {id(p) for p in m.parameters()}
    counts = m.count_parameters()
    assert counts["total"] == sum(p.numel() for p in m.parameters()) == counts["backbone"] + counts["head"]
    assert counts["total"] <= 600_000


def test_full_preset_size():
    full = load_system("full")
    counts = build_model(full, model_config("full")).count_parameters()
    assert 14e6 <= counts["total"] <= 18e6
    assert 6e6 <= counts["backbone"] <= 7e6 and 9e6 <= counts["head"] <= 10e6


def test_model_config_validation():
    with pytest.raises(ConfigError, match="rank"):
        model_config("tiny", rank=0)
    with pytest.raises(ConfigError, match="dropout"):
        model_config("tiny", dropout=1.0)
    with pytest.raises(ConfigError, match="heads"):
        model_config("tiny", heads=5)
    with pytest.raises(ConfigError, match="model.widht"):
        model_config("tiny", widht=32)
    with pytest.raises(ConfigError, match="preset"):
        model_config("huge")
    assert build(ModelConfig, MODEL_PRESETS["full"]).rank >= 5  # r >= K_max of the full system


def test_dropout_zero_builds_no_dropout(system, batch):
    m0 = _model(system, dropout=0.0)
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in m0.modules())
    m1 = _model(system, dropout=0.2)
    assert any(isinstance(mod, torch.nn.Dropout) for mod in m1.modules())
    m0.train()
    with torch.no_grad():
        a = m0(batch.y[:4], batch.H[:4], batch.codes[:4], batch.snr_db[:4]).R_pred
        b = m0(batch.y[:4], batch.H[:4], batch.codes[:4], batch.snr_db[:4]).R_pred
    torch.testing.assert_close(a, b)  # train mode is deterministic without dropout


def test_model_trains(system, batch):
    """30 Adam steps on 64 fixed scenes with lam_cov = 1 cut the NMSE of R_eff substantially."""
    cfg = LossConfig(weights=LossWeights(lam_cov=1.0))
    with _threads(1):
        m = _model(system, seed=0)
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        for step in range(30):
            res = compute_loss(m(batch.y, batch.H, batch.codes, batch.snr_db), batch, system, 0.0, cfg)
            if step == 0:
                first = res.total.item()
            assert torch.isfinite(res.total)
            opt.zero_grad()
            res.total.backward()
            opt.step()
        with torch.no_grad():
            last = compute_loss(m(batch.y, batch.H, batch.codes, batch.snr_db), batch, system, 0.0, cfg).total.item()
    assert last < 0.5 * first, (first, last)


def test_gradients_reach_every_parameter(system, batch):
    m = _model(system)
    cfg = LossConfig(weights=LossWeights(lam_cov=1.0, lam_k=1.0, lam_subspace=1.0, lam_gap=1.0))
    res = compute_loss(m(batch.y[:8], batch.H[:8], batch.codes[:8], batch.snr_db[:8]), batch.select(slice(0, 8)),
                       system, 0.0, cfg)
    res.total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
