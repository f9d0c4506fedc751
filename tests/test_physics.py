"""Physics against docs/system_model.md: steering, channel, codebooks, scenes, SNR, covariances.

Every test uses fixed seeds; statistical tolerances are several standard errors wide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ris_dist.config import load_system
from ris_dist.physics import back_projection, codewords, path_difference, rng, simulate, steering
from ris_dist.physics.scenes import normalized_coords, sample_scene_params
from ris_dist.physics.simulate import code_indices


# ---------------------------------------------------------------- steering
def _brute_force_steering(system, az_deg: float, el_deg: float, r: float) -> np.ndarray:
    """a_n from explicit 3-D positions, written from the design page, not from the library."""
    nh, nv = system.ris_h, system.ris_v
    dh, dv = system.spacing_h_m, system.spacing_v_m
    phi, theta = math.radians(az_deg), math.radians(el_deg)
    q = r * np.array([math.cos(theta) * math.cos(phi), math.cos(theta) * math.sin(phi), math.sin(theta)])
    k0 = 2 * math.pi / system.wavelength_m
    a = np.zeros(nh * nv, dtype=np.complex128)
    for j in range(nv):
        for i in range(nh):
            p = np.array([0.0, (i - (nh - 1) / 2) * dh, (j - (nv - 1) / 2) * dv])
            a[j * nh + i] = np.exp(-1j * k0 * (np.linalg.norm(q - p) - r)) / math.sqrt(nh * nv)
    return a


# A non-square array with unequal spacing catches h/v or i/j swaps that a 4×4 λ/2 array hides.
ODD = dict(ris_h=5, ris_v=3, element_spacing_h_m=0.11, element_spacing_v_m=0.19, num_snapshots=8)


@pytest.mark.parametrize("name, overrides", [("tiny", {}), ("tiny", ODD), ("full", {})])
def test_steering_matches_brute_force(name: str, overrides: dict) -> None:
    system = load_system(name, **overrides)
    gen = np.random.default_rng(0)
    pts = [(gen.uniform(-60, 60), gen.uniform(-30, 30), gen.uniform(0.2, 12.0)) for _ in range(20)]
    pts += [(0.0, 0.0, 0.31), (59.0, -29.0, 0.25), (-45.0, 20.0, 500.0)]
    az, el, r = (torch.tensor(c, dtype=torch.float64) for c in zip(*pts))
    want = np.stack([_brute_force_steering(system, *p) for p in pts])
    got64 = steering(system, az, el, r)
    assert got64.dtype == torch.complex128
    np.testing.assert_allclose(got64.numpy(), want, atol=1e-10)
    got32 = steering(system, az.float(), el.float(), r.float())
    assert got32.dtype == torch.complex64
    # float32 angles/ranges: phase errors of order k0·|Δ|·1e-7, far below 1e-4.
    np.testing.assert_allclose(got32.numpy(), want, atol=2e-4)
    np.testing.assert_allclose(torch.linalg.vector_norm(got32, dim=-1).numpy(), 1.0, atol=1e-6)


def test_steering_unit_norm_both_models() -> None:
    system = load_system("full")
    g = torch.Generator().manual_seed(1)
    az = torch.rand(100, generator=g) * 120 - 60
    el = torch.rand(100, generator=g) * 60 - 30
    r = torch.rand(100, generator=g) * 9.5 + 0.5
    for model in ("exact", "fresnel"):
        a = steering(system, az, el, r, model=model)
        torch.testing.assert_close(torch.linalg.vector_norm(a, dim=-1), torch.ones(100), atol=1e-5, rtol=0)
        # Uniform amplitude across the aperture.
        torch.testing.assert_close(a.abs(), torch.full_like(a.abs(), system.num_elements ** -0.5), atol=1e-6, rtol=0)


def test_element_order_horizontal_index_fastest() -> None:
    system = load_system("tiny", **ODD)
    nh, nv = system.ris_h, system.ris_v
    k0 = 2 * math.pi / system.wavelength_m
    # A far source off to +y (φ = +30°, θ = 0): phase grows by k0·d_H·sinφ per step of i, none along j.
    a = steering(system, torch.tensor(30.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                 torch.tensor(1e6, dtype=torch.float64)).numpy().reshape(nv, nh)  # [j, i]
    step_i = np.angle(a[:, 1:] / a[:, :-1])
    step_j = np.angle(a[1:, :] / a[:-1, :])
    np.testing.assert_allclose(step_i, k0 * system.spacing_h_m * 0.5, atol=1e-5)
    np.testing.assert_allclose(step_j, 0.0, atol=1e-5)
    # And a source up (+z, θ = +20°) changes phase along j only.
    b = steering(system, torch.tensor(0.0, dtype=torch.float64), torch.tensor(20.0, dtype=torch.float64),
                 torch.tensor(1e6, dtype=torch.float64)).numpy().reshape(nv, nh)
    np.testing.assert_allclose(np.angle(b[1:, :] / b[:-1, :]), k0 * system.spacing_v_m * math.sin(math.radians(20)),
                               atol=1e-5)
    np.testing.assert_allclose(np.angle(b[:, 1:] / b[:, :-1]), 0.0, atol=1e-5)


def _fresnel_max_phase_error(system, r: float) -> float:
    az = torch.linspace(*system.azimuth_range_deg, 61, dtype=torch.float64)[:, None]
    el = torch.linspace(*system.elevation_range_deg, 31, dtype=torch.float64)[None, :]
    rr = torch.tensor(r, dtype=torch.float64)
    err = path_difference(system, az, el, rr, "exact") - path_difference(system, az, el, rr, "fresnel")
    return float((2 * math.pi / system.wavelength_m * err).abs().max())


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_fresnel_error_small_beyond_inner_limit(name: str) -> None:
    system = load_system(name)
    lam = system.wavelength_m
    D = math.hypot(system.ris_h * system.spacing_h_m, system.ris_v * system.spacing_v_m)  # aperture diagonal
    r_inner = 0.62 * math.sqrt(D ** 3 / lam)
    errs = [_fresnel_max_phase_error(system, f * r_inner) for f in (1.0, 1.5, 2.0, 4.0)]
    # π/8 is the classical bound at the inner limit; over ±60° it is nearly reached for the large array.
    assert errs[0] < math.pi / 8, errs
    assert errs[1] < 0.2, errs
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])), errs  # decreases with range
    assert _fresnel_max_phase_error(system, 0.1 * r_inner) > 1.0  # and is large very close in


def test_steering_broadcasting_shapes_and_dtypes() -> None:
    system = load_system("tiny")
    N = system.num_elements
    az = torch.zeros(3, 1, 1)
    el = torch.zeros(1, 4, 1)
    r = torch.ones(1, 1, 5)
    assert steering(system, az, el, r).shape == (3, 4, 5, N)
    assert steering(system, az, el, 1.0).shape == (3, 4, 1, N)
    assert steering(system, torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0)).shape == (N,)
    assert steering(system, 10, 5, 2).dtype == torch.complex64  # python ints become float32
    a = steering(system, torch.zeros(7, 2), torch.zeros(7, 2), torch.ones(7, 2), model="fresnel")
    assert a.shape == (7, 2, N)
    # Broadcasting gives the same numbers as explicit expansion.
    full = steering(system, az.expand(3, 4, 5), el.expand(3, 4, 5), r.expand(3, 4, 5))
    torch.testing.assert_close(steering(system, az, el, r), full)


# ---------------------------------------------------------------- codebooks
def test_codebook_shapes_and_unit_modulus() -> None:
    tiny = load_system("tiny")
    dft = codewords(tiny)
    assert dft.shape == (16, 16) and dft.dtype == torch.complex64
    torch.testing.assert_close(dft @ dft.mH, 16 * torch.eye(16, dtype=torch.complex64), atol=1e-4, rtol=0)
    wide = codewords(load_system("tiny", **{"codebook.beams_h": 8, "codebook.beams_v": 4}))
    assert wide.shape == (32, 16)
    rnd = codewords(load_system("tiny", **{"codebook.kind": "random", "codebook.size": 40}))
    assert rnd.shape == (40, 16)
    had = codewords(load_system("tiny", **{"codebook.kind": "hadamard"}))
    assert had.shape == (16, 16)
    torch.testing.assert_close(had.imag, torch.zeros(16, 16))
    assert set(had.real.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(had @ had.mH, 16 * torch.eye(16, dtype=torch.complex64), atol=1e-5, rtol=0)
    for book in (dft, wide, rnd, had, codewords(load_system("full"))):
        torch.testing.assert_close(book.abs(), torch.ones_like(book.abs()), atol=1e-6, rtol=0)
    # The random codebook is a property of its own seed only.
    again = codewords(load_system("tiny", **{"codebook.kind": "random", "codebook.size": 40}))
    assert torch.equal(rnd, again)
    other = codewords(load_system("tiny", **{"codebook.kind": "random", "codebook.size": 40, "codebook.seed": 1}))
    assert not torch.allclose(rnd, other)


@pytest.mark.parametrize("kind, bits", [("random", 1), ("random", 2), ("random", 3), ("dft", 1), ("dft", 2)])
def test_codebook_quantization_levels(kind: str, bits: int) -> None:
    system = load_system("full", **{"codebook.kind": kind, "codebook.quant_bits": bits})
    book = codewords(system).to(torch.complex128)
    step = 2 * math.pi / 2 ** bits
    level = torch.angle(book) / step
    torch.testing.assert_close(level, torch.round(level), atol=1e-5, rtol=0)
    levels = set((torch.round(level).to(torch.int64) % 2 ** bits).unique().tolist())
    assert levels <= set(range(2 ** bits))
    if kind == "random":  # 144×144 random phases hit every level
        assert len(levels) == 2 ** bits
    torch.testing.assert_close(book.abs(), torch.ones_like(book.abs()), atol=1e-6, rtol=0)


def test_codes_in_batch_come_from_codebook() -> None:
    system = load_system("tiny", **{"codebook.kind": "random", "codebook.size": 64, "codebook.per_scene_selection": True})
    b = simulate(system, range(20), seed=3, split="train")
    book = codewords(system)
    sel = code_indices(system, rng.scene_keys(3, "train", torch.arange(20)))
    assert sel.shape == (20, system.num_snapshots)
    assert all(len(set(row.tolist())) == system.num_snapshots for row in sel)  # L distinct codewords
    assert len({tuple(row.tolist()) for row in sel}) == 20  # per-scene selection differs
    torch.testing.assert_close(b.codes, book[sel])


# ---------------------------------------------------------------- scenes
@pytest.mark.parametrize("name, overrides", [("full", {}), ("tiny", {"max_sources": 4})])
def test_min_separation_and_ranges(name: str, overrides: dict) -> None:
    system = load_system(name, **overrides)
    idx = torch.arange(4000)
    p = sample_scene_params(system, rng.scene_keys(11, "train", idx), idx)
    c = normalized_coords(system, p.azimuth_deg.double(), p.elevation_deg.double(), p.range_m.double().clamp_min(1e-3))
    d = torch.linalg.vector_norm(c[:, :, None, :] - c[:, None, :, :], dim=-1)  # [B, K, K]
    pair = p.valid[:, :, None] & p.valid[:, None, :] & ~torch.eye(system.max_sources, dtype=torch.bool)
    assert bool(pair.any())
    assert float(d[pair].min()) >= system.min_separation_cells * (1 - 1e-5)
    v = p.valid
    for t, (lo, hi) in ((p.azimuth_deg, system.azimuth_range_deg), (p.elevation_deg, system.elevation_range_deg),
                        (p.range_m, system.range_range_m)):
        assert float(t[v].min()) >= lo and float(t[v].max()) <= hi
        assert float(t[~v].abs().max()) == 0.0  # padding is zero
    assert float(p.powers[~v].abs().max()) == 0.0
    assert bool((p.powers[v] > 0).all())


def test_impossible_separation_fails_loudly() -> None:
    """Too few candidates at the separation is an error naming the scene, never a silent violation."""
    system = load_system("tiny", min_separation_cells=2.5, max_sources=4)
    idx = torch.arange(200)
    with pytest.raises(RuntimeError, match=r"scene \d+: no position"):
        sample_scene_params(system, rng.scene_keys(11, "train", idx), idx)


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_num_sources_uniform(name: str) -> None:
    system = load_system(name)
    idx = torch.arange(4000)
    p = sample_scene_params(system, rng.scene_keys(5, "val", idx), idx)
    counts = torch.bincount(p.num_sources, minlength=system.max_sources + 1)
    assert int(counts[0]) == 0 and counts.numel() == system.max_sources + 1
    assert torch.equal(p.valid.sum(1), p.num_sources)
    assert stats.chisquare(counts[1:].numpy()).pvalue > 1e-3


def test_h_unit_power_per_entry() -> None:
    b = simulate(load_system("tiny"), range(1000), seed=2, split="train")
    power = b.H.abs() ** 2
    assert abs(float(power.mean()) - 1.0) < 0.02
    # Unit power per entry holds at every (m, n), not just on average over the matrix.
    assert float((power.mean(0) - 1).abs().max()) < 0.2


@pytest.mark.parametrize("kappa", [0.5, 3.0, 10.0])
def test_rician_factor(kappa: float) -> None:
    """Moment estimate: for |LoS|² = ν² and CN(0, 1−ν²) scatter, E|h|⁴ = 2 − ν⁴, so ν² = sqrt(2 − E|h|⁴)."""
    system = load_system("tiny", rician_factor_range=[kappa, kappa])
    b = simulate(system, range(1000), seed=4, split="train")
    assert torch.allclose(b.kappa, torch.full_like(b.kappa, kappa))
    m4 = float((b.H.abs().double() ** 4).mean())
    nu2 = math.sqrt(max(2.0 - m4, 0.0))
    assert nu2 == pytest.approx(kappa / (kappa + 1), abs=0.05)


# ---------------------------------------------------------------- SNR
@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_realized_snr_matches_request(snr_db: float) -> None:
    """‖y‖²/(L·M·σ²) − 1 is the realized SNR plus zero-mean noise/cross terms."""
    system = load_system("tiny", snr_range_db=[snr_db, snr_db])
    b = simulate(system, range(400), seed=6, split="train")
    L, M = system.num_snapshots, system.num_bs_antennas
    ratio = (b.y.abs() ** 2).sum((-1, -2)).double() / (L * M * b.noise_var.double())
    realized_db = 10 * torch.log10((ratio - 1).clamp_min(1e-3))
    assert abs(float(realized_db.mean()) - snr_db) < 0.3


def test_noise_var_definition_statistically() -> None:
    """E‖y‖²/(L·M) = σ²(1 + 10^(SNR/10)) exactly under the model; a z-test over scenes with random SNR."""
    system = load_system("tiny")
    b = simulate(system, range(2000), seed=7, split="train")
    L, M = system.num_snapshots, system.num_bs_antennas
    snr = 10 ** (b.snr_db.double() / 10)
    dev = (b.y.abs() ** 2).sum((-1, -2)).double() / (L * M * b.noise_var.double()) - 1 - snr
    # Var per scene: noise power 1/(LM), cross term 2·SNR/(LM).
    z = float(dev.sum() / torch.sqrt(((1 + 2 * snr) / (L * M)).sum()))
    assert abs(z) < 4.0, z
    assert bool((b.noise_var > 0).all())


# ---------------------------------------------------------------- covariances
def test_true_covariance_properties() -> None:
    system = load_system("tiny")
    N = system.num_elements
    b = simulate(system, range(500), seed=8, split="train")
    R = b.R_true.to(torch.complex128)
    torch.testing.assert_close(R, R.mH, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1), torch.full((500,), float(N),
                               dtype=torch.float64), atol=1e-3, rtol=0)
    ev = torch.linalg.eigvalsh(R)  # ascending
    assert float(ev.min()) >= -1e-5 * N
    for k in range(1, system.max_sources + 1):
        e = ev[b.num_sources == k]
        assert float(e[:, -k].min()) > 1e-2 * N  # K signal eigenvalues ...
        assert float(e[:, :-k].abs().max()) < 1e-4 * N  # ... and nothing else: rank K


def test_sample_covariance_properties_and_definition() -> None:
    system = load_system("tiny")
    N, L = system.num_elements, system.num_snapshots
    b = simulate(system, range(300), seed=9, split="train")
    R = b.R_samp.to(torch.complex128)
    torch.testing.assert_close(R, R.mH, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1),
                               torch.full((300,), float(N), dtype=torch.float64), atol=1e-3, rtol=0)
    assert float(torch.linalg.eigvalsh(R).min()) >= -1e-5 * N
    # The definition, written out: (1/L) Σ_l x̂_l x̂_l^H, trace-normalized, no mean-centring.
    x = back_projection(system, b.y, b.H, b.codes).to(torch.complex128)  # [B, L, N]
    want = torch.einsum("bln,blm->bnm", x, x.conj()) / L
    want = want * (N / torch.diagonal(want, dim1=-2, dim2=-1).real.sum(-1))[:, None, None]
    torch.testing.assert_close(R, want, atol=1e-4 * N, rtol=0)


def test_single_snapshot_sample_covariance_is_rank_one() -> None:
    """With L = 1 a mean-centred estimate would be all zeros; the uncentred one is x̂x̂^H."""
    system = load_system("tiny", num_snapshots=1)
    b = simulate(system, range(50), seed=10, split="train")
    assert bool(torch.isfinite(b.R_samp.real).all())
    ev = torch.linalg.eigvalsh(b.R_samp.to(torch.complex128))
    torch.testing.assert_close(ev[:, -1], torch.full((50,), float(system.num_elements), dtype=torch.float64),
                               atol=1e-3, rtol=0)


def test_odd_by_odd_array_has_finite_measurements() -> None:
    system = load_system("tiny", ris_h=5, ris_v=3, num_snapshots=8)
    b = simulate(system, range(20), seed=0, split="train")
    assert bool((b.num_sources < system.max_sources).any())
    for t in (b.y, b.noise_var, b.R_true, b.R_samp):
        assert bool(torch.isfinite(torch.view_as_real(t) if t.is_complex() else t).all())


def _single_source(name: str, num: int, snr_db: float = 20.0):
    system = load_system(name, max_sources=1, snr_range_db=[snr_db, snr_db])
    b = simulate(system, range(num), seed=12, split="test")
    a = steering(system, b.azimuth_deg[:, 0], b.elevation_deg[:, 0], b.range_m[:, 0])  # [B, N]
    return system, b, a


@pytest.mark.parametrize("name, median_min, min_min", [("tiny", 0.7, 0.4), ("full", 0.2, 0.05)])
def test_sample_covariance_aligned_with_true_steering(name: str, median_min: float, min_min: float) -> None:
    """K = 1 at 20 dB: R_samp's top eigenvector points at a(η) (a random unit vector gives 1/N)."""
    system, b, a = _single_source(name, 100 if name == "tiny" else 40)
    _, V = torch.linalg.eigh(b.R_samp)
    overlap = (V[..., -1].conj() * a).sum(-1).abs() ** 2
    assert float(overlap.median()) > median_min
    assert float(overlap.min()) > min_min
    assert float(overlap.min()) > 5.0 / system.num_elements


def test_symbols_independent_per_snapshot() -> None:
    """Regression: one symbol reused for all snapshots. Estimate s_l = g_l^H y_l/‖g_l‖², g_l = G_l a."""
    system, b, a = _single_source("tiny", 200, snr_db=30.0)
    g = torch.einsum("bmn,bln,bn->blm", b.H, b.codes, a)  # G_l a  [B, L, M]
    s_hat = (g.conj() * b.y).sum(-1) / (g.abs() ** 2).sum(-1)  # [B, L]
    s_hat = s_hat / torch.sqrt(b.powers[:, :1])  # unit variance if CN(0, p)
    spread = s_hat.std(dim=1) / torch.sqrt((s_hat.abs() ** 2).mean(1))
    assert float(spread.median()) > 0.8  # i.i.d.: ≈ sqrt(1 − 1/L); reused: ≈ 0
    assert float((s_hat.abs() ** 2).mean()) == pytest.approx(1.0, abs=0.1)  # E|s|² = p
    lag1 = (s_hat[:, 1:] * s_hat[:, :-1].conj()).mean()
    assert abs(complex(lag1)) < 0.1  # uncorrelated across snapshots
    # The back-projected fields differ from snapshot to snapshot, too.
    x = back_projection(system, b.y, b.H, b.codes)
    assert float((x[:, 1:] - x[:, :-1]).abs().mean()) > 0.3 * float(x.abs().mean())
