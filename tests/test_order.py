"""MDL / AIC source-count estimation."""

from __future__ import annotations

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.localize import estimate_order
from ris_dist.localize.order import information_criterion
from ris_dist.physics import simulate, steering


def _eigenvalues(R: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(R.to(torch.complex128))


@pytest.mark.parametrize("name", ["tiny", "full"])
@pytest.mark.parametrize("method", ["mdl", "aic"])
def test_recovers_order_on_true_covariance_with_noise_floor(name, method):
    system = load_system(name)
    batch = simulate(system, torch.arange(24), seed=3, split="test")
    eye = torch.eye(system.num_elements, dtype=torch.complex128)
    R = batch.R_true.to(torch.complex128) + 1e-2 * eye
    k_hat = estimate_order(_eigenvalues(R), system.num_snapshots, method, max_sources=system.max_sources)
    assert torch.equal(k_hat, batch.num_sources)


@pytest.mark.parametrize("name", ["tiny", "full"])
@pytest.mark.parametrize("method", ["mdl", "aic"])
def test_recovers_order_on_high_snr_sample_covariance(name, method):
    """R_true-like sample covariances: x_l = A s_l + n_l at the RIS, 20 dB per source, L = 4N."""
    system = load_system(name)
    batch = simulate(system, torch.arange(16), seed=4, split="test")
    n, snapshots = system.num_elements, 4 * system.num_elements
    gen = torch.Generator().manual_seed(0)
    A = steering(system, batch.azimuth_deg, batch.elevation_deg, batch.range_m) * n ** 0.5  # |a_n| = 1
    shape = (len(batch), system.max_sources, snapshots)
    s = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)) / 2 ** 0.5
    s = s * batch.powers.sqrt()[..., None]
    noise_shape = (len(batch), n, snapshots)
    noise = torch.complex(torch.randn(noise_shape, generator=gen), torch.randn(noise_shape, generator=gen))
    x = A.transpose(-1, -2) @ s + 0.1 * noise / 2 ** 0.5  # noise power 1e-2: 20 dB below a 0 dB source
    R = x @ x.mH / snapshots
    k_hat = estimate_order(_eigenvalues(R), snapshots, method, max_sources=system.max_sources)
    assert torch.equal(k_hat, batch.num_sources)


def test_clipped_to_one_and_k_max():
    flat = torch.ones(2, 16, dtype=torch.float64)  # white: k = 0 is best, clipped up to 1
    assert estimate_order(flat, 16, "mdl", max_sources=2).tolist() == [1, 1]
    spread = torch.logspace(4, -4, 16, dtype=torch.float64)[None]  # every eigenvalue distinct
    assert estimate_order(spread, 1000, "aic", max_sources=3).tolist() == [3]


def test_rank_deficient_eigenvalues_stay_finite():
    lam = torch.tensor([[5.0, 3.0, 0.0, 0.0, -1e-9, 0.0]], dtype=torch.float64)
    assert torch.isfinite(information_criterion(lam, 16, "mdl")).all()
    assert estimate_order(lam, 16, "mdl", max_sources=4).tolist() == [2]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="order_method"):
        estimate_order(torch.ones(1, 4), 16, "bic")
    with pytest.raises(ValueError, match="num_snapshots"):
        estimate_order(torch.ones(1, 4), 0, "mdl")
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        estimate_order(torch.ones(4), 16, "mdl")
