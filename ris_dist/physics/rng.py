"""Counter-based random numbers: every draw is a pure function of (key, stream, counter).

A scene's randomness must not depend on which batch, rank, worker or device produced it,
so there is no generator state to advance. Each scene gets a 64-bit key from
``(seed, split, global index)``; each quantity has a fixed stream id; each element of that
quantity has a fixed counter. Bits come from two rounds of the SplitMix64 finalizer in
int64 arithmetic (wrap-around multiplication is bit-identical to uint64), so CPU and GPU
produce the same integers. Uniforms keep 24 bits, exactly representable in float32.
"""

from __future__ import annotations

import hashlib
import math

import torch

_MASK64 = (1 << 64) - 1


def _s64(x: int) -> int:
    """uint64 constant → the int64 with the same bit pattern."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _s64(0x9E3779B97F4A7C15)
_M1 = _s64(0xBF58476D1CE4E5B9)
_M2 = _s64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def _mix_int(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def split_id(split: str) -> int:
    """Stable 63-bit id of a split name (``"train"``, ``"val"``, ``"test"``, or any other)."""
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    return int.from_bytes(hashlib.sha256(split.encode()).digest()[:8], "little") >> 1


def check_indices(indices: torch.Tensor) -> None:
    """Scene indices must be int64 and >= 0.

    A CPU tensor is checked through numpy, which is no device sync; a device tensor costs
    one, so callers in a hot loop check their host copy before moving it (as ``simulate``
    does) and pass ``check=False`` to :func:`scene_keys`.
    """
    if indices.dtype != torch.int64:
        raise TypeError(f"scene indices must be int64, got {indices.dtype}")
    if indices.numel() == 0:
        return
    low = int(indices.numpy().min()) if indices.device.type == "cpu" else int(indices.min())
    if low < 0:
        raise ValueError(f"scene indices must be >= 0, got min {low}")


def scene_keys(seed: int, split: str, indices: torch.Tensor, check: bool = True) -> torch.Tensor:
    """int64 keys ``[B]`` for global scene ``indices`` of (seed, split)."""
    if check:
        check_indices(indices)
    base = _s64(_mix_int(_mix_int(int(seed) & _MASK64) ^ split_id(split)))
    return _mix(indices * _GOLDEN + base)


def random_bits(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """int64 bits ``[B, *shape]``: element e of ``stream`` for each key."""
    count = math.prod(shape)
    counter = torch.arange(count, dtype=torch.int64, device=keys.device)
    z = _mix(keys[:, None] ^ _s64(_mix_int(stream + 1)))
    bits = _mix(z + counter[None, :] * _GOLDEN)
    return bits.reshape(keys.shape[0], *shape)


def uniform(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 uniforms in the open interval (0, 1), ``[B, *shape]``."""
    top24 = _shr(random_bits(keys, stream, shape), 40)
    return (top24.to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def normal(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals (Box–Muller) ``[B, *shape]``, float32."""
    u = uniform(keys, stream, (2, *shape))
    u1, u2 = u[:, 0], u[:, 1]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


def complex_normal(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """CN(0, 1) samples ``[B, *shape]`` complex64 (unit variance: E|z|² = 1)."""
    u = uniform(keys, stream, (2, *shape))
    radius = torch.sqrt(-torch.log(u[:, 0]))  # |z|² ~ Exp(1)
    phase = 2.0 * math.pi * u[:, 1]
    return torch.polar(radius, phase)
