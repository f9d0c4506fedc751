"""Plain per-scene, per-element numpy/python reference of the measurement model.

This is the loop style of the old single-machine pipeline: scalar ``math``/``cmath`` per
element for the steering vectors, explicit loops over snapshots, sources, elements and
antennas for ``G_l`` and ``y_l``, and for R_samp one ``numpy.linalg.solve`` per snapshot
followed by outer-product accumulation. It serves two purposes:

* a cross-check of :func:`ris_dist.physics.simulate` written straight from
  ``docs/system_model.md`` (complex128 throughout);
* the baseline of ``python -m ris_dist.bench simulate``.

Random draws. To compare numbers, the reference must use the *same* draws as
``simulate``; they come from the counter-based streams of :mod:`ris_dist.physics.rng` via
:func:`draw_inputs`, which returns plain numpy arrays. Timing decision: the benchmark times
:func:`reference_scene` only, *excluding* :func:`draw_inputs`, while the batched torch path
is timed end to end (draws included). That favours the reference, so the reported speed-up
is a lower bound.
"""

from __future__ import annotations

import cmath
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import SystemConfig
from ..physics import rng
from ..physics.scenes import STREAM_NOISE, STREAM_SYMBOLS, bs_ris_channel, sample_scene_params
from ..physics.simulate import code_indices, codes_from_indices


@dataclass
class SceneInputs:
    """Everything random about one scene, as numpy arrays (complex128/float64)."""

    index: int
    num_sources: int
    azimuth_deg: np.ndarray  # [K] (valid sources only)
    elevation_deg: np.ndarray  # [K]
    range_m: np.ndarray  # [K]
    powers: np.ndarray  # [K] linear
    snr_db: float
    H: np.ndarray  # [M, N]
    codes: np.ndarray  # [L, N]
    unit_symbols: np.ndarray  # [K, L] CN(0, 1), scaled by sqrt(p_k) inside the reference
    unit_noise: np.ndarray  # [L, M] CN(0, 1), scaled by σ inside the reference


@dataclass
class SceneOutputs:
    """The reference's measurements and covariances for one scene."""

    y: np.ndarray  # [L, M]
    noise_var: float
    R_true: np.ndarray  # [N, N], tr = N
    R_samp: np.ndarray  # [N, N], tr = N


def draw_inputs(system: SystemConfig, indices, seed: int, split: str) -> list[SceneInputs]:
    """The draws ``simulate`` makes for these scenes, from the same counter-based streams."""
    idx = torch.as_tensor(indices, dtype=torch.int64)
    keys = rng.scene_keys(seed, split, idx)
    p = sample_scene_params(system, keys, idx)
    H = bs_ris_channel(system, keys, p.kappa)
    codes = codes_from_indices(system, code_indices(system, keys))
    kmax, L, M = system.max_sources, system.num_snapshots, system.num_bs_antennas
    symbols = rng.complex_normal(keys, STREAM_SYMBOLS, (kmax, L))
    noise = rng.complex_normal(keys, STREAM_NOISE, (L, M))
    out = []
    for b in range(idx.shape[0]):
        k = int(p.num_sources[b])
        out.append(SceneInputs(
            index=int(idx[b]),
            num_sources=k,
            azimuth_deg=p.azimuth_deg[b, :k].double().numpy(),
            elevation_deg=p.elevation_deg[b, :k].double().numpy(),
            range_m=p.range_m[b, :k].double().numpy(),
            powers=p.powers[b, :k].double().numpy(),
            snr_db=float(p.snr_db[b]),
            H=H[b].numpy().astype(np.complex128),
            codes=codes[b].numpy().astype(np.complex128),
            unit_symbols=symbols[b, :k].numpy().astype(np.complex128),
            unit_noise=noise[b].numpy().astype(np.complex128),
        ))
    return out


def element_positions(system: SystemConfig) -> list[tuple[float, float]]:
    """(h_n, v_n) for n = j·N_H + i, straight from the geometry section of the design page."""
    pos = []
    for j in range(system.ris_v):
        for i in range(system.ris_h):
            pos.append(((i - (system.ris_h - 1) / 2) * system.spacing_h_m,
                        (j - (system.ris_v - 1) / 2) * system.spacing_v_m))
    return pos


def steering_vector(system: SystemConfig, positions: list[tuple[float, float]], azimuth_deg: float,
                    elevation_deg: float, range_m: float) -> np.ndarray:
    """Exact near-field a(φ, θ, r), one element at a time with scalar math."""
    n_el = len(positions)
    k0 = 2.0 * math.pi / system.wavelength_m
    phi, theta = math.radians(azimuth_deg), math.radians(elevation_deg)
    u, w = math.cos(theta) * math.sin(phi), math.sin(theta)
    amp = 1.0 / math.sqrt(n_el)
    a = np.empty(n_el, dtype=np.complex128)
    for n, (h, v) in enumerate(positions):
        dist = math.sqrt(range_m * range_m - 2.0 * range_m * (h * u + v * w) + h * h + v * v)
        a[n] = amp * cmath.exp(-1j * k0 * (dist - range_m))
    return a


def reference_scene(system: SystemConfig, scene: SceneInputs,
                    positions: list[tuple[float, float]] | None = None) -> SceneOutputs:
    """y, σ², R_true and R_samp of one scene with explicit loops (the timed part of the baseline)."""
    positions = positions or element_positions(system)
    N, M, L, K = system.num_elements, system.num_bs_antennas, system.num_snapshots, scene.num_sources
    A = [steering_vector(system, positions, scene.azimuth_deg[k], scene.elevation_deg[k], scene.range_m[k])
         for k in range(K)]
    amp = [math.sqrt(scene.powers[k]) for k in range(K)]

    # Noise-free signal G_l A s_l, snapshot by snapshot; G_l = H·diag(c_l) built entry by entry.
    G = []
    signal = np.zeros((L, M), dtype=np.complex128)
    signal_energy = 0.0
    for l in range(L):
        G_l = np.empty((M, N), dtype=np.complex128)
        for m in range(M):
            for n in range(N):
                G_l[m, n] = scene.H[m, n] * scene.codes[l, n]
        G.append(G_l)
        for m in range(M):
            acc = 0j
            for k in range(K):
                s_kl = amp[k] * scene.unit_symbols[k, l]
                for n in range(N):
                    acc += G_l[m, n] * A[k][n] * s_kl
            signal[l, m] = acc
            signal_energy += acc.real * acc.real + acc.imag * acc.imag
    # SNR = Σ_l‖G_l A s_l‖² / (L·M·σ²)  ⇒  σ² from the drawn SNR.
    noise_var = signal_energy / (L * M) / 10.0 ** (scene.snr_db / 10.0)
    sigma = math.sqrt(noise_var)
    y = np.empty((L, M), dtype=np.complex128)
    for l in range(L):
        for m in range(M):
            y[l, m] = signal[l, m] + sigma * scene.unit_noise[l, m]

    # R_samp: x̂_l = G_l^H (G_l G_l^H + δI)^{-1} y_l, δ relative to tr(G_l G_l^H)/M; no mean-centring.
    R_samp = np.zeros((N, N), dtype=np.complex128)
    for l in range(L):
        gram = G[l] @ G[l].conj().T
        delta = system.samp_delta_rel * np.trace(gram).real / M
        x = G[l].conj().T @ np.linalg.solve(gram + delta * np.eye(M), y[l])
        R_samp += np.outer(x, x.conj())
    R_samp /= L
    R_samp *= N / np.trace(R_samp).real

    R_true = np.zeros((N, N), dtype=np.complex128)
    for k in range(K):
        R_true += scene.powers[k] * np.outer(A[k], A[k].conj())
    R_true *= N / np.trace(R_true).real
    return SceneOutputs(y=y, noise_var=noise_var, R_true=R_true, R_samp=R_samp)


def reference_simulate(system: SystemConfig, indices, seed: int, split: str) -> list[SceneOutputs]:
    """Draw and run the reference for each scene (convenience for tests)."""
    positions = element_positions(system)
    return [reference_scene(system, s, positions) for s in draw_inputs(system, indices, seed, split)]
