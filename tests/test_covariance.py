"""effective_covariance: the single R_eff builder shared by train, validation and inference."""

from __future__ import annotations

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.covariance import effective_covariance, hermitian_trace_normalized
from ris_dist.physics import simulate


@pytest.fixture(scope="module")
def batch():
    system = load_system("tiny")
    return simulate(system, range(8), seed=3, split="train")


def _random_psd(B: int, N: int, rank: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(B, N, rank, 2, generator=g)
    F = torch.complex(F[..., 0], F[..., 1])
    return 5.0 * (F @ F.mH)  # deliberately not trace N


def _trace(R: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1)


def test_beta_endpoints(batch):
    R_pred = _random_psd(len(batch), 16, 3, 0)
    R0 = effective_covariance(R_pred, batch.R_samp, 0.0)
    R1 = effective_covariance(R_pred, batch.R_samp, 1.0)
    torch.testing.assert_close(R0, hermitian_trace_normalized(R_pred), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(R1, batch.R_samp, rtol=1e-5, atol=1e-5)


def test_hermitian_trace_psd_and_dtype(batch):
    R_pred = _random_psd(len(batch), 16, 2, 1)
    for beta in (0.0, 0.3, torch.linspace(0, 1, len(batch), dtype=torch.float64)):
        R = effective_covariance(R_pred, batch.R_samp, beta)
        assert R.dtype == torch.complex64  # a float64 β must not promote the matrices
        torch.testing.assert_close(R, R.mH, rtol=0, atol=1e-6)
        torch.testing.assert_close(_trace(R), torch.full((len(batch),), 16.0), rtol=1e-5, atol=1e-4)
        assert torch.linalg.eigvalsh(R).min() >= -1e-5 * 16


def test_per_scene_beta_matches_scalar(batch):
    R_pred = _random_psd(len(batch), 16, 2, 2)
    betas = torch.tensor([0.0, 0.25, 0.5, 1.0] * 2)
    R = effective_covariance(R_pred, batch.R_samp, betas)
    for i, b in enumerate(betas.tolist()):
        torch.testing.assert_close(R[i:i + 1], effective_covariance(R_pred[i:i + 1], batch.R_samp[i:i + 1], b))


def test_diag_loading_raises_min_eigenvalue(batch):
    R_pred = _random_psd(len(batch), 16, 2, 3)  # rank 2: min eigenvalue 0
    plain = torch.linalg.eigvalsh(effective_covariance(R_pred, batch.R_samp, 0.0))
    eps = 0.1
    loaded = effective_covariance(R_pred, batch.R_samp, 0.0, diag_loading=eps)
    lam = torch.linalg.eigvalsh(loaded)
    assert (lam[:, 0] > plain[:, 0] + 0.05).all()
    # ε is relative to the mean eigenvalue (1 at trace N): λ -> (λ + ε)/(1 + ε).
    torch.testing.assert_close(lam, (plain + eps) / (1 + eps), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_trace(loaded), torch.full((len(batch),), 16.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), float("inf"), True, "0.5"])
def test_invalid_scalar_beta_rejected(batch, beta):
    with pytest.raises(ValueError, match="beta"):
        effective_covariance(batch.R_true, batch.R_samp, beta)


def test_invalid_tensor_beta_rejected(batch):
    bad = torch.full((len(batch),), 0.5)
    bad[3] = 1.2
    with pytest.raises(ValueError, match=r"beta.*1\.2"):
        effective_covariance(batch.R_true, batch.R_samp, bad)
    with pytest.raises(ValueError, match="beta"):
        effective_covariance(batch.R_true, batch.R_samp, torch.full((len(batch) + 1,), 0.5))


def test_invalid_diag_loading_and_shapes(batch):
    with pytest.raises(ValueError, match="diag_loading"):
        effective_covariance(batch.R_true, batch.R_samp, 0.0, diag_loading=-1e-3)
    with pytest.raises(ValueError, match="R_pred"):
        effective_covariance(batch.R_true[:, :4, :4], batch.R_samp, 0.0)


def test_non_finite_input_propagates(batch):
    R_pred = batch.R_true.clone()
    R_pred[2, 0, 5] = float("nan")
    R = effective_covariance(R_pred, batch.R_samp, 0.0)
    assert not torch.isfinite(R[2]).all()
    assert torch.isfinite(R[[0, 1, 3]]).all()
