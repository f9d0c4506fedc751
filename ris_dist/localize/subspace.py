"""Covariance checks, the eigen-decomposition, and the MUSIC null spectrum ‖E_n^H a‖².

The null spectrum is evaluated through the signal subspace E_s (K_max columns, those beyond a
scene's K̂ zeroed), never through E_n (N − K̂ columns): K_max ≪ N, and the per-scene K̂ then
becomes a column mask instead of a ragged batch.
"""

from __future__ import annotations

import torch

from ..config import SystemConfig

#: Relative Frobenius asymmetry ‖R − R^H‖_F / ‖R‖_F above which R is rejected as non-Hermitian.
HERMITIAN_RTOL = 1e-4
#: Floor of 1 − ‖E_s^H a‖² on grids: float32 cancellation leaves ~1e-7 of noise at a peak.
NULL_FLOOR = 1e-6


def validate_covariance(R: torch.Tensor, system: SystemConfig) -> torch.Tensor:
    """Check that ``R`` is a finite Hermitian ``[B, N, N]`` batch; return it as a complex tensor.

    Raises ``ValueError`` naming the problem and the first offending scene of the batch.
    """
    if not isinstance(R, torch.Tensor):
        raise ValueError(f"R must be a torch.Tensor, got {type(R).__name__}")
    n = system.num_elements
    if R.ndim != 3 or R.shape[-2:] != (n, n) or R.shape[0] < 1:
        raise ValueError(f"R must have shape [B, {n}, {n}] for system {system.name!r} (N = {n}), "
                         f"got {tuple(R.shape)}")
    if not (R.is_complex() or R.is_floating_point()):
        raise ValueError(f"R must be a complex or real floating tensor, got dtype {R.dtype}")
    if not R.is_complex():
        R = R.to(torch.complex128 if R.dtype == torch.float64 else torch.complex64)
    finite = torch.isfinite(torch.view_as_real(R)).flatten(1).all(dim=1)
    if not bool(finite.all()):
        scene = int(torch.nonzero(~finite)[0, 0])
        raise ValueError(f"R has non-finite entries (NaN or Inf) in scene {scene} of the batch")
    R64 = R.to(torch.complex128)
    norm = torch.linalg.matrix_norm(R64)
    if not bool((norm > 0).all()):
        scene = int(torch.nonzero(norm <= 0)[0, 0])
        raise ValueError(f"R is the zero matrix in scene {scene} of the batch")
    asym = torch.linalg.matrix_norm(R64 - R64.mH) / norm
    bad = asym > HERMITIAN_RTOL
    if bool(bad.any()):
        scene = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"R is not Hermitian in scene {scene} of the batch: ‖R − R^H‖_F / ‖R‖_F = "
                         f"{float(asym[scene]):.3g} > {HERMITIAN_RTOL:g}")
    return R


def validate_num_sources(num_sources, batch: int, max_sources: int, device: torch.device) -> torch.Tensor:
    """Check a given source count ``[B]`` (oracle or a model's K head) lies in 1..K_max."""
    k = torch.as_tensor(num_sources, device=device)
    if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
        raise ValueError(f"num_sources must be an integer tensor, got dtype {k.dtype}")
    if k.ndim == 0:
        k = k.expand(batch)
    if k.shape != (batch,):
        raise ValueError(f"num_sources must have shape [{batch}] (one count per scene), got {tuple(k.shape)}")
    bad = (k < 1) | (k > max_sources)
    if bool(bad.any()):
        scene = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"num_sources must be in 1..K_max = {max_sources}, got {int(k[scene])} "
                         f"in scene {scene} of the batch")
    return k.to(torch.int64)


@torch.no_grad()
def eigen_decomposition(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(eigenvalues [B, N] descending float64, eigenvectors [B, N, N] complex128 in the same order).

    float64: R_true is rank-deficient, and in float32 its null eigenvectors leak a little signal.
    """
    R64 = R.to(torch.complex128)
    values, vectors = torch.linalg.eigh(0.5 * (R64 + R64.mH))
    return values.flip(-1), vectors.flip(-1)


def signal_subspace(vectors: torch.Tensor, num_sources: torch.Tensor, max_sources: int) -> torch.Tensor:
    """E_s ``[B, N, K_max]``: the K̂ principal eigenvectors, columns beyond a scene's K̂ set to zero."""
    keep = torch.arange(max_sources, device=vectors.device)[None, :] < num_sources[:, None]
    return vectors[..., :max_sources] * keep[:, None, :].to(vectors.dtype)


def grid_null_spectrum(grid_steering: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """1 − ‖E_s^H a‖², floored at NULL_FLOOR, ``[B, G]`` for shared steering rows ``[G, N]``.

    One GEMM over all scenes: E_s of the batch is laid side by side as ``[N, B·K]``.
    """
    batch, n, k = signal.shape
    flat = signal.to(grid_steering.dtype).permute(1, 0, 2).reshape(n, batch * k)
    coeff = grid_steering.conj() @ flat  # [G, B·K]
    power = (coeff.real.square() + coeff.imag.square()).reshape(-1, batch, k).sum(-1)  # [G, B]
    return (1.0 - power.T).clamp_min(NULL_FLOOR)


def points_null_spectrum(steering_rows: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
    """‖a − E_s E_s^H a‖² ``[B, P]`` for per-scene steering rows ``[B, P, N]``.

    The residual form has no cancellation, so refinement can resolve the null down to ~1e-12.
    """
    es = signal.to(steering_rows.dtype)
    coeff = steering_rows @ es.conj()  # [B, P, K]: (E_s^H a)_k
    residual = steering_rows - coeff @ es.transpose(-1, -2)
    return residual.real.square().sum(-1) + residual.imag.square().sum(-1)
