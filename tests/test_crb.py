"""CRB: shapes, NaN slots, monotonicity in SNR and L, agreement with a finite-difference Fisher matrix."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.crb import crb, fisher
from ris_dist.physics import simulate, steering


@pytest.fixture(scope="module")
def scenes(system):
    return simulate(system, range(32), 7, "test")


def test_shape_nan_and_finite(system, scenes):
    std = crb(scenes, system)
    assert std.shape == (32, system.max_sources, 3) and std.dtype == torch.float64
    assert torch.isnan(std[~scenes.valid]).all()
    assert (~scenes.valid).any(), "the fixture should contain a scene with fewer than K_max sources"
    v = std[scenes.valid]
    assert torch.isfinite(v).all() and (v > 0).all()


def test_chunking_does_not_change_result(system, scenes):
    a = crb(scenes, system)
    b = crb(scenes, system, batch_size=5)
    torch.testing.assert_close(a, b, equal_nan=True)


def test_falls_with_snr(system, scenes):
    lo = crb(scenes, system)
    hi = crb(dataclasses.replace(scenes, noise_var=scenes.noise_var / 10.0), system)
    v = scenes.valid
    assert (hi[v] < lo[v]).all()


def test_falls_with_snapshots():
    # A 32-word random codebook; L = 8 picks an evenly strided subset of the words L = 32 uses,
    # and positions, powers and H are functions of the scene key only, so the L = 32 scene
    # holds every snapshot of the L = 8 one plus more. Same σ² for both.
    book = {"codebook.kind": "random", "codebook.size": 32}
    s8 = load_system("tiny", num_snapshots=8, **book)
    s32 = load_system("tiny", num_snapshots=32, **book)
    a = simulate(s8, range(16), 3, "test")
    b = simulate(s32, range(16), 3, "test")
    torch.testing.assert_close(a.azimuth_deg, b.azimuth_deg)
    torch.testing.assert_close(a.H, b.H)
    b = dataclasses.replace(b, noise_var=a.noise_var)
    c8, c32 = crb(a, s8), crb(b, s32)
    assert (c32[a.valid] < c8[a.valid]).all()


def _fd_fisher(system, scene, step=(1e-4, 1e-4, 1e-6)) -> torch.Tensor:
    """Slepian–Bangs with ∂C_l from central finite differences of C_l itself (float64)."""
    valid = scene.valid[0]
    params = torch.stack([scene.azimuth_deg[0], scene.elevation_deg[0], scene.range_m[0]], -1)[valid].double()
    p = scene.powers[0][valid].double()
    H = scene.H[0].to(torch.complex128)
    codes = scene.codes[0].to(torch.complex128)
    noise = float(scene.noise_var[0])

    def cov(x):  # [L, M, M]
        A = steering(system, x[:, 0], x[:, 1], x[:, 2]).T  # [N, K]
        G = H[None] * codes[:, None, :]  # [L, M, N]
        GA = G @ A
        return (GA * p.to(GA.dtype)) @ GA.mH + noise * torch.eye(H.shape[0], dtype=GA.dtype)

    C = cov(params)
    Cinv = torch.linalg.inv(C)
    derivs = []
    for k in range(params.shape[0]):
        for a in range(3):
            e = torch.zeros_like(params)
            e[k, a] = step[a]
            derivs.append((cov(params + e) - cov(params - e)) / (2 * step[a]))
    q = len(derivs)
    F = torch.zeros(q, q, dtype=torch.float64)
    for i in range(q):
        for j in range(q):
            F[i, j] = torch.einsum("lab,lbc,lcd,lda->", Cinv, derivs[i], Cinv, derivs[j]).real
    return F


def test_agrees_with_finite_difference_fisher(system, scenes):
    std = crb(scenes, system)
    checked = 0
    for row in range(len(scenes)):
        scene = scenes.select(slice(row, row + 1))
        k = int(scene.num_sources[0])
        if k != 2 and checked > 0:
            continue
        F_fd = _fd_fisher(system, scene)
        F_ad = fisher(scene, system)[0]
        keep = scene.valid[0].repeat_interleave(3)
        F_ad = F_ad[keep][:, keep]
        torch.testing.assert_close(F_ad, F_fd, rtol=1e-4, atol=1e-6 * float(F_fd.abs().max()))
        std_fd = torch.sqrt(torch.diagonal(torch.linalg.inv(F_fd))).reshape(k, 3)
        rel = (std[row][scene.valid[0]] - std_fd).abs() / std_fd
        assert float(rel.max()) < 0.01
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_singular_fisher_gives_inf(system, scenes):
    # Two sources at the same position: their columns in F coincide, so F is singular.
    row = int(torch.nonzero(scenes.num_sources == 2)[0, 0])
    scene = scenes.select(slice(row, row + 1))
    scene = dataclasses.replace(scene, azimuth_deg=scene.azimuth_deg[:, :1].repeat(1, 2),
                                elevation_deg=scene.elevation_deg[:, :1].repeat(1, 2),
                                range_m=scene.range_m[:, :1].repeat(1, 2))
    std = crb(scene, system)
    assert torch.isinf(std).all()


def test_single_source_far_more_accurate_at_high_snr(system, scenes):
    # Sanity of units: a high-SNR source has a sub-degree CRB on the tiny array.
    row = int(torch.argmax(scenes.snr_db))
    std = crb(scenes.select(slice(row, row + 1)), system)[0][scenes.valid[row]]
    assert float(std[:, :2].max()) < 5.0 and math.isfinite(float(std.max()))
