"""RIS codebooks: 2-D DFT beams, random phases, Hadamard rows; optional b-bit phase quantization.

Every codeword is unit-modulus, so G_l = H·diag(c_l) keeps H's column norms.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..config import SystemConfig
from . import rng

_STREAM_RANDOM_CODEBOOK = 1000


def quantize_phase(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Round every phase to the nearest of 2**bits levels; 0 bits keeps phases continuous."""
    if bits <= 0:
        return codes
    step = 2.0 * math.pi / (1 << bits)
    phase = torch.round(torch.angle(codes) / step) * step
    return torch.polar(torch.ones_like(phase), phase)


def _dft(system: SystemConfig) -> torch.Tensor:
    kh, kv = system.dft_beams
    i = torch.arange(system.ris_h, dtype=torch.float64)
    j = torch.arange(system.ris_v, dtype=torch.float64)
    p = torch.arange(kh, dtype=torch.float64)
    q = torch.arange(kv, dtype=torch.float64)
    # Beam (p, q) ∝ exp(j2π(p·i/kH + q·j/kV)); element order n = j·N_H + i.
    ph = 2 * math.pi * p[:, None] * i[None, :] / kh  # [kh, N_H]
    pv = 2 * math.pi * q[:, None] * j[None, :] / kv  # [kv, N_V]
    phase = pv[:, None, :, None] + ph[None, :, None, :]  # [kv, kh, N_V, N_H]
    return torch.polar(torch.ones_like(phase), phase).reshape(kh * kv, system.num_elements)


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(torch.complex128)


def _random(system: SystemConfig) -> torch.Tensor:
    key = rng.scene_keys(system.codebook.seed, "codebook", torch.zeros(1, dtype=torch.int64))
    phase = 2 * math.pi * rng.uniform(key, _STREAM_RANDOM_CODEBOOK, (system.codebook_size, system.num_elements))[0]
    return torch.polar(torch.ones_like(phase, dtype=torch.float64), phase.double())


@lru_cache(maxsize=16)
def _codebook_cpu(system: SystemConfig) -> torch.Tensor:
    kind = system.codebook.kind
    if kind == "dft":
        book = _dft(system)
    elif kind == "hadamard":
        book = _hadamard(system.num_elements)
    elif kind == "random":
        book = _random(system)
    else:  # the config validator makes this unreachable
        raise ValueError(f"codebook.kind {kind!r} is not known")
    return quantize_phase(book, system.codebook.quant_bits).to(torch.complex64)


def codewords(system: SystemConfig, device=None) -> torch.Tensor:
    """All codewords of the system's codebook ``[S, N]`` complex64, unit modulus."""
    return _codebook_cpu(system).to(device)


def fixed_selection(system: SystemConfig) -> torch.Tensor:
    """Indices of the L codewords used when ``per_scene_selection`` is off: evenly strided."""
    size, num = system.codebook_size, system.num_snapshots
    return torch.round(torch.linspace(0, size - 1, num, dtype=torch.float64)).to(torch.int64)
