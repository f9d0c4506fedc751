"""Losses: NMSE is an error, weights default to 0, structure terms are safe at degeneracy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ris_dist.config import ConfigError, build, load_system
from ris_dist.losses import (
    NULL_FLOOR_REL,
    STRUCTURE_TERMS,
    LossConfig,
    LossWeights,
    compute_loss,
    format_selftest,
    k_loss,
    nmse,
    oracle_logits,
    selftest,
    structure_terms,
    true_subspace,
)
from ris_dist.model import ModelOutput
from ris_dist.physics import simulate, true_covariance

FORMS = ("projector", "svd")
ALL_ON = LossWeights(lam_cov=1.0, lam_k=1.0, lam_gap=1.0, lam_subspace=1.0, lam_peak=1.0, lam_ortho=1.0,
                    lam_locate=1.0, lam_null=1.0)


@pytest.fixture(scope="module")
def batch(system):
    return simulate(system, range(16), seed=11, split="train")


def _degenerate(system, batch, dtype=torch.complex64) -> dict[str, torch.Tensor]:
    """Spectra where eigenvector derivatives blow up: I, rank 1 (N−1 repeated zeros), and
    R_true with equal powers (repeated signal eigenvalues when the steering is near-orthogonal)."""
    B, N = len(batch), system.num_elements
    t = true_subspace(system, batch, torch.complex128)
    q = t.Q[:, :, :1]
    equal = true_covariance(system, batch.azimuth_deg.double(), batch.elevation_deg.double(),
                            batch.range_m.double(), batch.valid.double())
    return {
        "identity": torch.eye(N, dtype=dtype).expand(B, N, N).clone(),
        "rank1": (N * q @ q.mH).to(dtype),
        "equal_powers": equal.to(dtype),
        "zero_noise_true": batch.R_true.to(dtype),
    }


# ---- NMSE -------------------------------------------------------------------------------
def test_nmse_values():
    R = torch.randn(3, 4, 4, dtype=torch.complex64)
    torch.testing.assert_close(nmse(R, R), torch.zeros(3))
    torch.testing.assert_close(nmse(torch.zeros_like(R), R), torch.ones(3))
    # Hand case: R = diag(1, 1), R̂ = diag(2, 0): ‖R̂−R‖² = 1 + 1 = 2, ‖R‖² = 2 -> 1; R̂ = diag(1.5, 1) -> 0.125.
    I2 = torch.eye(2, dtype=torch.complex64)[None]
    assert nmse(torch.diag(torch.tensor([2.0, 0.0])).to(torch.complex64)[None], I2).item() == pytest.approx(1.0)
    assert nmse(torch.diag(torch.tensor([1.5, 1.0])).to(torch.complex64)[None], I2).item() == pytest.approx(0.125)


def test_nmse_is_an_error_not_a_similarity(batch):
    assert nmse(batch.R_true, batch.R_true).max().item() < 1e-10  # the old bug gave ≈1 here
    assert nmse(batch.R_samp, batch.R_true).mean().item() > 0.1


# ---- configs ----------------------------------------------------------------------------
def test_weights_default_zero_and_validated():
    w = LossWeights()
    assert all(getattr(w, f) == 0.0 for f in w.__dataclass_fields__)
    assert all(getattr(LossConfig().weights, f) == 0.0 for f in w.__dataclass_fields__)
    assert build(LossWeights, {"lam_cov": 1}).lam_cov == 1.0
    with pytest.raises(ConfigError, match="lam_covv"):
        build(LossWeights, {"lam_covv": 1.0})
    with pytest.raises(ConfigError, match="lam_gap"):
        build(LossWeights, {"lam_gap": -0.1})
    with pytest.raises(ConfigError, match="lam_peak"):
        build(LossWeights, {"lam_peak": float("inf")})
    with pytest.raises(ConfigError, match="weights.lam_x"):
        build(LossConfig, {"weights": {"lam_x": 1.0}})
    with pytest.raises(ConfigError, match="structure_form"):
        build(LossConfig, {"structure_form": "eigh"})
    with pytest.raises(ConfigError, match="k_under_weight"):
        build(LossConfig, {"k_under_weight": -1.0})


# ---- compute_loss -----------------------------------------------------------------------
def _out(R_pred, batch, system, logits=None):
    if logits is None:
        logits = torch.zeros(len(batch), system.max_sources)
    return ModelOutput(R_pred=R_pred, k_logits=logits, factor=None)


def test_total_with_only_lam_cov_is_nmse(system, batch):
    cfg = LossConfig(weights=LossWeights(lam_cov=1.0))
    res = compute_loss(_out(batch.R_samp, batch, system), batch, system, 0.0, cfg)
    torch.testing.assert_close(res.total, nmse(batch.R_samp, batch.R_true).mean(), rtol=1e-5, atol=1e-6)
    assert set(res.weighted) == {"nmse"}
    assert set(res.raw) == {"nmse", "k"}  # no structure term is computed at weight 0


def test_weights_override_and_all_zero(system, batch):
    cfg = LossConfig(weights=LossWeights(lam_cov=1.0))
    res = compute_loss(_out(batch.R_samp, batch, system), batch, system, 0.0, cfg,
                       weights=LossWeights(lam_cov=2.0, lam_ortho=3.0))
    assert set(res.weighted) == {"nmse", "ortho"}
    torch.testing.assert_close(res.total, 2.0 * res.raw["nmse"] + 3.0 * res.raw["ortho"])
    zero = compute_loss(_out(batch.R_samp, batch, system), batch, system, 0.0, LossConfig())
    assert zero.total.item() == 0.0 and zero.weighted == {}


def test_loss_acts_on_R_eff(system, batch):
    cfg = LossConfig(weights=LossWeights(lam_cov=1.0))
    res = compute_loss(_out(batch.R_true, batch, system), batch, system, 1.0, cfg)
    torch.testing.assert_close(res.total, nmse(batch.R_samp, batch.R_true).mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_non_finite_prediction_gives_non_finite_total(system, batch, form):
    R = batch.R_true.clone()
    R[1, 2, 3] = float("nan")  # off-diagonal: the trace stays finite, eigvalsh alone would hide it
    for w in (LossWeights(lam_cov=1.0), LossWeights(lam_gap=1.0), LossWeights(lam_subspace=1.0),
              LossWeights(lam_peak=1.0), LossWeights(lam_ortho=1.0), ALL_ON):
        res = compute_loss(_out(R, batch, system), batch, system, 0.0, LossConfig(weights=w, structure_form=form))
        assert not torch.isfinite(res.total), w
    logits = torch.zeros(len(batch), system.max_sources)
    logits[0, 0] = float("inf")
    res = compute_loss(_out(batch.R_true, batch, system, logits), batch, system, 0.0,
                       LossConfig(weights=LossWeights(lam_k=1.0)))
    assert not torch.isfinite(res.total)


def test_k_loss_under_count_penalty():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    K = torch.tensor([2])
    ce = k_loss(logits, K, 0.0)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(logits, K - 1, reduction="none"))
    torch.testing.assert_close(k_loss(logits, K, 0.5) - ce, 0.5 * logits.softmax(-1)[:, :1].sum(-1))
    # Over-counting is not penalized extra; K = 1 has no under-count class.
    torch.testing.assert_close(k_loss(logits, torch.tensor([1]), 3.0), k_loss(logits, torch.tensor([1]), 0.0))


@pytest.mark.parametrize("form", FORMS)
def test_selftest_and_oracle(system, batch, form):
    cfg = LossConfig(weights=ALL_ON, structure_form=form, k_under_weight=1.0)
    d = selftest(batch, system, cfg, 0.0)
    assert d["nmse_RR"] == 0.0 and d["nmse_0R"] == pytest.approx(1.0)
    assert 0.0 <= d["oracle_total"] < 2e-3
    line = format_selftest(d)
    assert line.startswith("[SELFTEST] nmse(R,R)=0.000e+00 nmse(0,R)=1.000e+00 oracle_total=")
    assert selftest(batch, system, cfg, 0.5)["oracle_total"] > 10 * d["oracle_total"]


# ---- structure terms --------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_structure_terms_zero_at_oracle(system, batch, form):
    t = true_subspace(system, batch, torch.complex64)
    terms = structure_terms(batch.R_true, t, form)
    assert set(terms) == set(STRUCTURE_TERMS)
    for name, v in terms.items():
        # peak is O(μ/λ_K) by construction (resolvent); locate too, plus the softmax mass of a neighbour
        # that lies near a second source's null (≤ 0.0125 here); the others are exact zeros up to rounding.
        # null is ≈ NULL_FLOOR_REL/λ_K (its cut sits just above the oracle's zero noise eigenvalues).
        tol = {"peak": 2e-3, "locate": 2e-2, "null": 2e-3}.get(name, 1e-5)
        assert v.abs().max().item() < tol, (name, v)
    # ... and clearly not zero on every scene for the biased sample covariance (all terms > 0.03 here),
    samp = structure_terms(batch.R_samp, t, form)
    for name in STRUCTURE_TERMS:
        assert samp[name].min().item() > 1e-2, (name, samp[name])
    # ... nor for R = I, which has no eigengap and no spectral peak at the sources (both ≈ 1/2).
    eye = structure_terms(torch.eye(16, dtype=torch.complex64).expand(len(batch), 16, 16), t, form)
    for name in ("gap", "peak", "locate", "null"):
        assert eye[name].min().item() > 0.2, (name, eye[name])
    # locate at R = I: a flat spectrum, the uniform softmax over the truth and its 8 neighbours.
    torch.testing.assert_close(eye["locate"], torch.full_like(eye["locate"], math.log(9)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form", FORMS)
def test_structure_terms_scale_invariant(system, batch, form):
    t = true_subspace(system, batch, torch.complex64)
    for R in (batch.R_samp, 0.5 * (batch.R_samp + batch.R_true)):
        a = structure_terms(R, t, form)
        for c in (1e-3, 7.3, 1e4):
            b = structure_terms(c * R, t, form)
            for name in STRUCTURE_TERMS:
                torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", STRUCTURE_TERMS)
def test_structure_gradients_finite_at_degenerate_spectra(system, batch, form, name):
    t = true_subspace(system, batch, torch.complex64)
    for label, R0 in _degenerate(system, batch).items():
        R = R0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(structure_terms(R, t, form, (name,))[name].sum(), R)
        assert torch.isfinite(g).all(), (label, name, form)


@pytest.mark.parametrize("form", FORMS)
def test_gradients_finite_through_compute_loss(system, batch, form):
    for label, R0 in _degenerate(system, batch).items():
        R = R0.clone().requires_grad_(True)
        logits = oracle_logits(batch.num_sources, system.max_sources).requires_grad_(True)
        res = compute_loss(_out(R, batch, system, logits), batch, system, 0.25,
                           LossConfig(weights=ALL_ON, structure_form=form, k_under_weight=1.0))
        gR, gk = torch.autograd.grad(res.total, (R, logits))
        assert torch.isfinite(res.total) and torch.isfinite(gR).all() and torch.isfinite(gk).all(), label


def _hermitian_perturbation(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    return torch.complex(S + S.mT, T - T.mT)


@pytest.mark.parametrize("name", ["subspace", "peak", "ortho", "locate"])
def test_gradcheck_projector_forms_at_degenerate_points(name):
    """Smooth projector forms pass gradcheck at I, rank 1 and equal-power R_true (complex128).

    gap is a ratio of extreme eigenvalues: finite-gradient (tested above) but not
    differentiable where those eigenvalues repeat, so it is not gradchecked there.
    """
    system = load_system("tiny", ris_h=3, ris_v=2, max_sources=2, num_snapshots=4)
    batch = simulate(system, range(2), seed=5, split="train")
    t = true_subspace(system, batch, torch.complex128)
    for label, R0 in _degenerate(system, batch, torch.complex128).items():
        B, N = R0.shape[0], R0.shape[-1]
        # Evaluated exactly at the degenerate point R0 (zero perturbation), Hermitian directions only.
        S = torch.zeros(B, N, N, dtype=torch.float64, requires_grad=True)
        T = torch.zeros(B, N, N, dtype=torch.float64, requires_grad=True)
        fn = lambda s, tt, R0=R0: structure_terms(  # noqa: E731
            R0 + _hermitian_perturbation(s, tt), t, "projector", (name,))[name]
        assert torch.autograd.gradcheck(fn, (S, T), eps=1e-6, atol=1e-5, rtol=1e-3), label


def _music_null(R: torch.Tensor, A: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Mean over the valid sources of ‖E_nᴴ a_k‖², E_n from ``eigh`` (the textbook MUSIC denominator)."""
    _, V = torch.linalg.eigh(R)
    out = []
    for i in range(R.shape[0]):
        En = V[i, :, : R.shape[-1] - int(K[i])]
        out.append(((En.mH @ A[i, :, : int(K[i])]).abs() ** 2).sum(0).mean())
    return torch.stack(out)


def test_null_term_is_musics_null_spectrum_at_the_truth(system, batch):
    """With a clear eigengap the smooth projector is E_n E_nᴴ: the term equals ‖E_nᴴ a_k‖² for
    a covariance whose sources sit off the truth (far from 0 and from 1)."""
    SHIFT_DEG = 10.0
    t = true_subspace(system, batch, torch.complex128)
    A = true_subspace(system, dataclasses.replace(batch, azimuth_deg=batch.azimuth_deg + SHIFT_DEG), torch.complex128).A
    R = A @ A.mH + 1e-5 * torch.eye(system.num_elements, dtype=torch.complex128)
    exact = _music_null(R, t.A, batch.num_sources)
    assert exact.min().item() > 0.05 and exact.max().item() < 0.95, exact
    got = structure_terms(R, t, "projector", ("null",))["null"]
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-3)
    # Without a clear gap (the sample covariance) it is the filter 1/(1 + (λ/μ)²) on R̄'s spectrum,
    # cut at μ = √(λ_K (λ_{K+1} + floor)), written here with eigh.
    Rb = batch.R_samp.to(torch.complex128)
    Rb = Rb * (system.num_elements / torch.diagonal(Rb, dim1=-2, dim2=-1).real.sum(-1))[:, None, None]
    lam, V = torch.linalg.eigh(Rb)
    n, K = system.num_elements, batch.num_sources
    rows = torch.arange(len(batch))
    mu = torch.sqrt(lam[rows, n - K] * (lam[rows, n - K - 1] + NULL_FLOOR_REL))
    P = V @ torch.diag_embed((1 / (1 + (lam / mu[:, None]) ** 2)).to(V.dtype)) @ V.mH
    reference = (t.A.conj() * (P @ t.A)).sum(-2).real.sum(-1) / K
    got = structure_terms(batch.R_samp.to(torch.complex128), t, "projector", ("null",))["null"]
    torch.testing.assert_close(got, reference, rtol=1e-6, atol=1e-9)


def test_null_term_gradcheck_at_a_generic_point():
    """Where λ_K and λ_{K+1} are simple (a sample covariance) the null term is smooth: gradcheck passes."""
    system = load_system("tiny", ris_h=3, ris_v=2, max_sources=2, num_snapshots=5)
    batch = simulate(system, range(2), seed=5, split="train")
    t = true_subspace(system, batch, torch.complex128)
    R0 = batch.R_samp.to(torch.complex128)
    B, N = R0.shape[0], R0.shape[-1]
    S = torch.zeros(B, N, N, dtype=torch.float64, requires_grad=True)
    T = torch.zeros(B, N, N, dtype=torch.float64, requires_grad=True)
    fn = lambda s, tt: structure_terms(R0 + 1e-2 * _hermitian_perturbation(s, tt), t, "projector",  # noqa: E731
                                       ("null",))["null"]
    assert torch.autograd.gradcheck(fn, (S, T), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_structure_terms_mask_invalid_slots(system, batch):
    """Padding slots (K < K_max) do not change any term: same value as the K-source subset."""
    t = true_subspace(system, batch, torch.complex64)
    one = batch.num_sources == 1
    assert one.any() and (~one).any()
    for form in FORMS:
        full = structure_terms(batch.R_samp, t, form)
        sub = batch.select(one)
        ts = true_subspace(system, sub, torch.complex64)
        part = structure_terms(sub.R_samp, ts, form)
        for name in STRUCTURE_TERMS:
            torch.testing.assert_close(full[name][one], part[name], rtol=1e-4, atol=1e-5)
