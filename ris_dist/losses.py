"""Training losses on the effective covariance R_eff (what MUSIC sees) and on the K head.

Terms (raw key -> weight): nmse -> lam_cov, k -> lam_k, gap -> lam_gap,
subspace -> lam_subspace, peak -> lam_peak, ortho -> lam_ortho, locate -> lam_locate,
null -> lam_null.

Structure terms use the TRUE K and the true steering vectors. Rules they all obey:
* scale-free: they are computed on R̄ = N·R/tr(R), so R -> c·R (c > 0) changes nothing;
* ≈ 0 at the oracle R_eff = R_true;
* finite gradients at repeated or zero eigenvalues: no eigenvector of R_eff is ever
  differentiated. Only eigenvalues (``eigvalsh``, whose backward is V·diag(g)·V^H with no
  1/(λ_i−λ_j) factors), linear/quadratic forms with the truth's projector Q Q^H (Q: an
  orthonormal basis of span A, a constant), the resolvent (R̄ + μI)^{-1} (eigenvalues
  ≥ μ > 0) and the null term's filter (I + (R̄/μ)²)^{-1} (eigenvalues of I + (R̄/μ)² ≥ 1)
  appear in the graph. Singular values of thin N×K matrices W are taken as
  eigenvalues of the K×K Gram W^H W for the same reason (``svd``'s backward has
  1/(σ_i²−σ_j²) factors).
* non-finite in -> non-finite out: LAPACK's eigvalsh raises or returns finite garbage for
  NaN input, so such scenes are evaluated on I and every structure term adds a per-scene
  "poison" 0·ΣR̄ that is NaN iff R̄ has a non-finite entry. Nothing is clamped or
  replaced by finite values; the trainer's step gate sees the NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_nn

from .config import SystemConfig
from .covariance import effective_covariance
from .localize.grid import uwr_to_angles
from .loss_config import LossConfig, LossWeights, StructureForm
from .model.net import ModelOutput
from .physics.simulate import SceneBatch
from .physics.steering import direction_cosines, resolution_cells, steering

TERM_WEIGHTS: dict[str, str] = {
    "nmse": "lam_cov", "k": "lam_k", "gap": "lam_gap",
    "subspace": "lam_subspace", "peak": "lam_peak", "ortho": "lam_ortho", "locate": "lam_locate",
    "null": "lam_null",
}
"""raw/weighted key -> the LossWeights field that scales it."""
STRUCTURE_TERMS = ("gap", "subspace", "peak", "ortho", "locate", "null")

DELTA_REL = 1e-3
"""Denominator guard of the gap ratio, relative to the mean eigenvalue (1 for R̄). It only
acts where signal and noise levels are both ≈ 0 (0/0), bounding the gradient there by ~1/δ."""
PEAK_MU_REL = 1e-3
"""μ of the resolvent (R̄ + μI)^{-1} in the peak term, relative to the mean eigenvalue.
The oracle value is O(μ/λ_K(R̄)) (≈1e-4 on tiny), not exactly 0; gradients are O(1/μ)."""
LOCATE_OFFSETS_CELLS = (-1.0, -0.5, 0.5, 1.0)
"""Neighbours of each true source in the locate term: these offsets, in resolution cells, along
the u and the w axis in turn (8 neighbours and the truth itself). The 1/r axis is left out: on
`tiny` the configured range interval spans less than one 1/r cell, so a range neighbour's null is
nearly as deep as the truth's even for R_true (an oracle value of ~0.5 per source)."""
NULL_FLOOR_REL = 1e-3
"""Added to λ_{K+1}(R̄) in the null term's cut μ = √(λ_K (λ_{K+1} + floor)), relative to the mean
eigenvalue: it keeps μ > 0 for a rank-K R̄ (the oracle) and bounds ∂μ/∂λ_{K+1} by √(λ_K/floor)/2."""
LOCATE_TEMPERATURE = 0.05
"""Temperature of the locate term's softmax over the scale-free null spectrum (1 at R̄ = I): at
the oracle the ½-cell neighbours stand ~0.6 above the truth, 12 temperatures."""


@dataclass
class LossResult:
    total: torch.Tensor
    """Scalar Σ weighted; non-finite whenever an input was."""
    raw: dict[str, torch.Tensor]
    """Unweighted scalars: "nmse" and "k" always (cheap monitors, no eigendecomposition);
    each structure term only when its weight is > 0."""
    weighted: dict[str, torch.Tensor]
    """λ·raw for every term whose λ > 0 (exactly the summands of ``total``)."""
    R_eff: torch.Tensor
    """[B, N, N] from covariance.effective_covariance: what MUSIC would see."""


# ---------------------------------------------------------------------------------------
def nmse(R_hat: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """‖R̂ − R‖²_F / ‖R‖²_F per scene [B]: 0 at R̂ = R, 1 at R̂ = 0 (an error, not a similarity)."""
    num = ((R_hat - R).abs() ** 2).sum(dim=(-2, -1))
    return num / (R.abs() ** 2).sum(dim=(-2, -1))


def k_loss(k_logits: torch.Tensor, num_sources: torch.Tensor, k_under_weight: float) -> torch.Tensor:
    """Per scene [B]: CE(logits, K−1) + k_under_weight·Σ_{j < K−1} softmax(logits)_j."""
    logits = k_logits.float()
    target = num_sources.to(torch.int64) - 1
    ce = F_nn.cross_entropy(logits, target, reduction="none")
    if k_under_weight == 0.0:
        return ce
    classes = torch.arange(logits.shape[-1], device=logits.device)
    under = (logits.softmax(-1) * (classes[None, :] < target[:, None])).sum(-1)
    return ce + k_under_weight * under


# ---------------------------------------------------------------------------------------
@dataclass
class _Truth:
    """Constants from the true scene (no gradient): Q [B,N,Kmax] orthonormal basis of span A
    (invalid columns zero), A [B,N,Kmax] unit-norm steering (invalid columns zero), mask."""

    Q: torch.Tensor
    A: torch.Tensor
    mask: torch.Tensor
    K: torch.Tensor
    patch: torch.Tensor
    """[B, Kmax, P, N] unit-norm steering at each source (index 0) and its locate-term neighbours."""


def true_subspace(system: SystemConfig, batch: SceneBatch, dtype: torch.dtype) -> _Truth:
    """Steering of the valid true positions, valid slots first, and an orthonormal basis.

    Q = QR(A) in complex128 equals the ridge-free A(A^H A)^{-1/2}: P_A = Q Q^H. Columns of
    invalid slots are zeroed after the QR (they sit after every valid column, so the valid
    columns of Q span exactly span(A_valid)); min_separation keeps A well conditioned.
    """
    valid = batch.valid
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    az, el, r = (torch.gather(x, 1, order).double() for x in (batch.azimuth_deg, batch.elevation_deg, batch.range_m))
    A = steering(system, az, el, r)  # float64 positions -> complex128 steering
    mask = torch.gather(valid, 1, order)
    A = torch.where(mask[..., None], A, torch.zeros((), dtype=A.dtype, device=A.device)).mT  # [B, N, Kmax]
    Q = torch.linalg.qr(A).Q * mask[:, None, :]
    patch = _locate_patch(system, az, el, r)
    patch = torch.where(mask[..., None, None], patch, torch.zeros((), dtype=patch.dtype, device=patch.device))
    return _Truth(Q=Q.to(dtype), A=A.to(dtype), mask=mask, K=batch.num_sources.to(torch.int64), patch=patch.to(dtype))


def _locate_patch(system: SystemConfig, az: torch.Tensor, el: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Steering ``[B, K, P, N]`` at (φ, θ, r) ``[B, K]`` and its neighbours along u and w (same range)."""
    f64 = dict(dtype=torch.float64, device=az.device)
    cell_u, cell_w, _ = resolution_cells(system)
    steps = torch.tensor(LOCATE_OFFSETS_CELLS, **f64)
    zero = torch.zeros(1, **f64)
    du = torch.cat([zero, steps * cell_u, torch.zeros_like(steps)])  # [P], the truth first
    dw = torch.cat([zero, torch.zeros_like(steps), steps * cell_w])
    u, w = direction_cosines(az, el)
    # Keep every neighbour inside the visible disc u² + w² < 1.
    w_n = (w[..., None] + dw).clamp(-0.999, 0.999)
    limit = 0.999 * torch.sqrt(1.0 - w_n * w_n)
    u_n = torch.maximum(torch.minimum(u[..., None] + du, limit), -limit)
    # Padding slots (range 0) get a finite placeholder range; the caller zeroes their steering.
    inv_r = 1.0 / torch.where(r > 0, r, torch.ones_like(r))[..., None].expand_as(u_n)
    azimuth, elevation, range_m = uwr_to_angles(torch.stack([u_n, w_n, inv_r], -1))
    return steering(system, azimuth, elevation, range_m)


def _poison(R: torch.Tensor) -> torch.Tensor:
    """[B]: 0 for a finite scene, NaN if any entry is non-finite (eigvalsh would hide it)."""
    return (R.real + R.imag).sum(dim=(-2, -1)) * 0.0


def _normalized(R: torch.Tensor) -> torch.Tensor:
    """R̄ = N·R/tr R: unit mean eigenvalue, so every term is invariant to R -> c·R."""
    n = R.shape[-1]
    R = 0.5 * (R + R.mH)
    return R * (n / torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1))[:, None, None]


def _herm_quad(X: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """X^H R X, exactly Hermitian."""
    C = X.mH @ R @ X
    return 0.5 * (C + C.mH)


def _kth_largest(lam_asc: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """k-th largest eigenvalue (k is 1-based, [B]) from ascending eigenvalues [B, N]."""
    n = lam_asc.shape[-1]
    return torch.gather(lam_asc, 1, (n - k)[:, None]).squeeze(1)


class _Spectrum:
    """Eigenvalues of R̄, computed at most once per loss call and only if a term needs them."""

    def __init__(self, Rb: torch.Tensor) -> None:
        self.Rb = Rb
        self._lam: torch.Tensor | None = None
        self._resolvent: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def lam(self) -> torch.Tensor:
        if self._lam is None:
            self._lam = torch.linalg.eigvalsh(self.Rb)
        return self._lam

    @property
    def resolvent(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(X^{-1} ``[B, N, N]``, background tr(X^{-1})/N ``[B]``) for X = R̄ + μI (peak and locate terms)."""
        if self._resolvent is None:
            N = self.Rb.shape[-1]
            Xi = torch.linalg.inv(self.Rb + PEAK_MU_REL * torch.eye(N, dtype=self.Rb.dtype, device=self.Rb.device))
            self._resolvent = (Xi, torch.diagonal(Xi, dim1=-2, dim2=-1).real.sum(-1) / N)
        return self._resolvent


def gap_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ∈ [0, 1): n / (n + s + δ), the noise level n relative to the signal level s.

    svd:       n = λ_{K+1}(R̄), s = λ_K(R̄)                       (≤ 1/2 by ordering)
    projector: n = λ_max(P_N R̄ P_N), s = λ_min(Q^H R̄ Q)          (compressions on the truth)
    0 at the oracle (rank-K R_true), 1/2 at R̄ = I.
    """
    Rb = spec.Rb
    if form == "svd":
        n = _kth_largest(spec.lam, t.K + 1)
        s = _kth_largest(spec.lam, t.K)
    else:
        N = Rb.shape[-1]
        P_N = torch.eye(N, dtype=Rb.dtype, device=Rb.device) - t.Q @ t.Q.mH
        n = torch.linalg.eigvalsh(_herm_quad(P_N, Rb))[..., -1]
        # Invalid slots give zero rows/cols; lift them above λ_max(R̄) ≤ tr R̄ = N so that
        # the minimum is over valid directions only.
        lift = torch.diag_embed((~t.mask).to(Rb.real.dtype) * 2.0 * N).to(Rb.dtype)
        s = torch.linalg.eigvalsh(_herm_quad(t.Q, Rb) + lift)[..., 0]
    return n / (n + s + DELTA_REL)


def subspace_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ∈ [0, 1]: how far span(A) is from R̄'s dominant subspace.

    projector: tr(P_N R̄)/tr R̄ = 1 − tr(Q^H R̄ Q)/N   (energy outside span A; linear in R)
    svd:       1 − tr(Q^H R̄ Q) / Σ_{i≤K} λ_i(R̄)      (Ky Fan: 0 iff span A is a top-K
               eigenspace — exactly MUSIC's requirement; 0 also at R̄ = I, which the gap
               term penalizes)
    """
    Rb = spec.Rb
    inside = torch.diagonal(_herm_quad(t.Q, Rb), dim1=-2, dim2=-1).real.sum(-1)
    if form == "projector":
        return 1.0 - inside / Rb.shape[-1]
    top = torch.cumsum(spec.lam.flip(-1), dim=-1)
    top_k = torch.gather(top, 1, (t.K - 1)[:, None]).squeeze(1)
    # No guard needed: for PSD R̄ (trace N) the top-K eigenvalue sum is >= K >= 1.
    return 1.0 - inside / top_k


def peak_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ∈ [0, 1): c/(1 + c) with c the inverse peak-to-background ratio of a MUSIC-like
    spectrum built from the resolvent X = R̄ + μI (μ·X^{-1} is a regularized noise projector,
    → E_n E_n^H as μ/λ_K → 0, with no eigenvector in the graph):

        background b = tr(X^{-1})/N  (mean of a^H X^{-1} a over isotropic unit a)
        projector: c = mean_{valid k} a_k^H X^{-1} a_k / b   (per-source null depth)
        svd:       c = λ_max(Q^H X^{-1} Q) / b               (worst direction in span A)
    c = 1 at R̄ = I (no contrast), c = O(μ/λ_K) at the oracle.
    """
    Xi, background = spec.resolvent
    if form == "projector":
        per_source = torch.diagonal(_herm_quad(t.A, Xi), dim1=-2, dim2=-1).real  # 0 on invalid slots
        c = per_source.sum(-1) / t.K.to(per_source.dtype) / background
    else:
        c = torch.linalg.eigvalsh(_herm_quad(t.Q, Xi))[..., -1] / background
    return c / (1.0 + c)


def ortho_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ∈ [0, 1]: coupling W = P_N R̄ Q between span(A) and its complement (0 iff span A
    is an invariant subspace of R̄, i.e. an eigenspace — so noise eigenvectors ⟂ steering).

    projector: ‖W‖²_F / ‖R̄‖²_F   (= ‖P_N R̄ P_A‖²_F / ‖R̄‖²_F)
    svd:       σ_max(W)² / ‖R̄‖²_F, σ_max² = λ_max(W^H W) of the K×K Gram (no svd backward)
    """
    Rb = spec.Rb
    RQ = Rb @ t.Q
    W = RQ - t.Q @ (t.Q.mH @ RQ)
    scale = (Rb.abs() ** 2).sum(dim=(-2, -1))
    if form == "projector":
        return (W.abs() ** 2).sum(dim=(-2, -1)) / scale
    gram = W.mH @ W
    return torch.linalg.eigvalsh(0.5 * (gram + gram.mH))[..., -1] / scale


def locate_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ≥ 0: mean over the valid sources of −log softmax(−c/τ) at the truth, a soft-argmax
    (cross-entropy) position loss on a MUSIC-like spectrum over a patch around each source.

    c_j = a_j^H X^{-1} a_j / b is the peak term's scale-free null spectrum (resolvent X = R̄ + μI,
    background b = tr(X^{-1})/N, no eigenvector in the graph) at the truth and its neighbours
    ±½ and ±1 resolution cell along u and w (:data:`LOCATE_OFFSETS_CELLS`). Unlike the peak
    term, which compares the truth with the isotropic background, it asks that the spectrum's
    minimum lie at the truth rather than a cell away: it penalizes a shifted or flat null.
    ≈ 0 at the oracle, log 9 at R̄ = I. ``form`` is unused (one form: the resolvent's).
    """
    Xi, background = spec.resolvent
    a = t.patch  # [B, K, P, N]
    null = torch.einsum("bkpn,bnm,bkpm->bkp", a.conj(), Xi, a).real / background[:, None, None]
    nll = -torch.log_softmax(-null / LOCATE_TEMPERATURE, dim=-1)[..., 0]  # [B, K]
    return torch.where(t.mask, nll, torch.zeros_like(nll)).sum(-1) / t.K.to(nll.dtype)


def null_term(spec: _Spectrum, t: _Truth, form: StructureForm) -> torch.Tensor:
    """[B] ∈ [0, 1]: MUSIC's null spectrum at the true sources, mean over the valid k of
    a_kᴴ P̃_n a_k (unit-norm a_k), with P̃_n a smooth noise projector of R̄ for the true K.

    P̃_n = (I + (R̄/μ)²)^{-1} applies f(λ) = 1/(1 + (λ/μ)²) to R̄'s eigenvalues: ≈ 1 on the noise
    eigenvalues and ≈ 0 on the signal ones, with the cut μ = √(λ_K (λ_{K+1} + floor)) at the
    geometric middle of the K-th eigengap (:data:`NULL_FLOOR_REL`). Where the gap is wide it is
    E_n E_nᴴ, so the term is ‖E_nᴴ a_k‖², the denominator of MUSIC's pseudo-spectrum at the
    truth. Only eigenvalues (``eigvalsh``) and a solve with I + (R̄/μ)² (eigenvalues ≥ 1) enter
    the graph, no eigenvector. ≈ floor/λ_K at the oracle, 1/2 at R̄ = I. Evaluated in complex128:
    I + (R̄/μ)² has a condition number up to (N/μ)². ``form`` is unused (one form).
    """
    Rb = spec.Rb.to(torch.complex128)
    lam = spec.lam.double()
    mu = torch.sqrt(_kth_largest(lam, t.K) * (_kth_largest(lam, t.K + 1) + NULL_FLOOR_REL))
    Z = Rb / mu[:, None, None]
    eye = torch.eye(Rb.shape[-1], dtype=Rb.dtype, device=Rb.device)
    A = t.A.to(Rb.dtype)
    filtered = torch.linalg.solve(eye + Z @ Z, A)  # P̃_n A, [B, N, Kmax]; zero on invalid slots
    per_source = (A.conj() * filtered).sum(-2).real
    return (per_source.sum(-1) / t.K.to(per_source.dtype)).to(spec.lam.dtype)


_TERM_FNS = {"gap": gap_term, "subspace": subspace_term, "peak": peak_term, "ortho": ortho_term,
             "locate": locate_term, "null": null_term}


def structure_terms(R: torch.Tensor, truth: _Truth, form: StructureForm,
                    names: tuple[str, ...] = STRUCTURE_TERMS) -> dict[str, torch.Tensor]:
    """Per-scene [B] values of the named structure terms on R (any positive scale)."""
    Rb = _normalized(R)
    poison = _poison(Rb)
    # LAPACK either raises or returns finite garbage on non-finite input. Scenes with any
    # non-finite entry (or zero trace) are evaluated on I instead, and the poison makes
    # their terms NaN: the failure is reported through the loss, never swallowed.
    bad = ~torch.isfinite(Rb).all(dim=-1).all(dim=-1)
    eye = torch.eye(Rb.shape[-1], dtype=Rb.dtype, device=Rb.device)
    spec = _Spectrum(torch.where(bad[:, None, None], eye, Rb))
    return {name: _TERM_FNS[name](spec, truth, form) + poison for name in names}


# ---------------------------------------------------------------------------------------
def compute_loss(out: ModelOutput, batch: SceneBatch, system: SystemConfig, beta: float | torch.Tensor,
                 loss_cfg: LossConfig, weights: LossWeights | None = None,
                 diag_loading: float = 0.0) -> LossResult:
    """Total loss of a batch. ``weights`` (the trainer's ramped λ) overrides ``loss_cfg.weights``.

    The NMSE term is nmse(R_eff, R_true) with R_eff from covariance.effective_covariance:
    the loss acts on what MUSIC sees, so β and diag loading are trained against, not around.
    """
    w = loss_cfg.weights if weights is None else weights
    if not isinstance(w, LossWeights):
        raise TypeError(f"weights must be LossWeights, got {type(w).__name__}")
    R_eff = effective_covariance(out.R_pred, batch.R_samp, beta, diag_loading)
    raw: dict[str, torch.Tensor] = {
        "nmse": nmse(R_eff, batch.R_true.to(R_eff.dtype)).mean(),
        "k": k_loss(out.k_logits, batch.num_sources, loss_cfg.k_under_weight).mean(),
    }
    active = tuple(name for name in STRUCTURE_TERMS if getattr(w, TERM_WEIGHTS[name]) > 0)
    if active:
        truth = true_subspace(system, batch, R_eff.dtype)
        raw.update({k: v.mean() for k, v in structure_terms(R_eff, truth, loss_cfg.structure_form, active).items()})
    weighted = {name: getattr(w, TERM_WEIGHTS[name]) * raw[name]
                for name in TERM_WEIGHTS if getattr(w, TERM_WEIGHTS[name]) > 0}
    # All-zero weights (e.g. step 0 of a ramp): 0·nmse keeps the graph and still turns NaN into NaN.
    total = sum(weighted.values()) if weighted else 0.0 * raw["nmse"]
    return LossResult(total=total, raw=raw, weighted=weighted, R_eff=R_eff)


def oracle_logits(num_sources: torch.Tensor, k_max: int, margin: float = 50.0) -> torch.Tensor:
    """Ideal K logits: ``margin`` on the true class, 0 elsewhere (CE ≈ (K_max−1)·e^{−margin})."""
    return margin * F_nn.one_hot(num_sources.to(torch.int64) - 1, k_max).float()


@torch.no_grad()
def selftest(batch: SceneBatch, system: SystemConfig, loss_cfg: LossConfig,
             beta: float | torch.Tensor) -> dict[str, float]:
    """Sanity numbers a run logs before training: nmse(R,R) = 0, nmse(0,R) = 1, and the total
    loss of the oracle (R_pred := R_true, ideal K logits), ≈ 0 when beta = 0."""
    R = batch.R_true
    oracle = ModelOutput(R_pred=R, k_logits=oracle_logits(batch.num_sources, system.max_sources), factor=None)
    return {
        "nmse_RR": float(nmse(R, R).mean()),
        "nmse_0R": float(nmse(torch.zeros_like(R), R).mean()),
        "oracle_total": float(compute_loss(oracle, batch, system, beta, loss_cfg).total),
    }


def format_selftest(d: dict[str, float]) -> str:
    """One log line: ``[SELFTEST] nmse(R,R)=0.000e+00 nmse(0,R)=1.000e+00 oracle_total=...``."""
    return (f"[SELFTEST] nmse(R,R)={d['nmse_RR']:.3e} nmse(0,R)={d['nmse_0R']:.3e} "
            f"oracle_total={d['oracle_total']:.3e}")
