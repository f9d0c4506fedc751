"""The physical system: RIS geometry, BS, scene ranges, codebook, success thresholds.

Symbols follow ``docs/system_model.md``; every field maps to one symbol there.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .schema import ConfigError, apply_overrides, build, check, read_yaml


def _check_interval(key: str, value: tuple[float, float], lo: float | None = None, hi: float | None = None,
                    allow_point: bool = False) -> None:
    a, b = value
    check(math.isfinite(a) and math.isfinite(b), key, value, "bounds must be finite")
    check(a < b or (allow_point and a == b), key, value, "needs min < max" if not allow_point else "needs min <= max")
    if lo is not None:
        check(a >= lo, key, value, f"min must be >= {lo}")
    if hi is not None:
        check(b <= hi, key, value, f"max must be <= {hi}")


@dataclass(frozen=True)
class CodebookConfig:
    """The RIS phase codes c_l applied at snapshot l."""

    kind: Literal["dft", "random", "hadamard"] = "dft"
    """2-D DFT beams, i.i.d. random phases, or rows of a Sylvester Hadamard matrix (N a power of 2)."""
    beams_h: int = 0
    """DFT only: number of horizontal beams kH (0 means N_H)."""
    beams_v: int = 0
    """DFT only: number of vertical beams kV (0 means N_V)."""
    size: int = 0
    """Random only: number of codewords (0 means N). DFT size is kH*kV, Hadamard size is N."""
    quant_bits: int = 0
    """b-bit phase quantization of every code entry; 0 keeps continuous phases."""
    per_scene_selection: bool = False
    """False: the same L codewords (evenly strided through the codebook) for every scene.
    True: each scene draws its own L distinct codewords from its counter-based stream."""
    seed: int = 0
    """Seed of the random codebook (a property of the hardware, not of the data split)."""

    def __post_init__(self) -> None:
        check(self.beams_h >= 0, "beams_h", self.beams_h, "must be >= 0")
        check(self.beams_v >= 0, "beams_v", self.beams_v, "must be >= 0")
        check(self.size >= 0, "size", self.size, "must be >= 0")
        check(0 <= self.quant_bits <= 16, "quant_bits", self.quant_bits, "must be in 0..16")


@dataclass(frozen=True)
class SuccessConfig:
    """Thresholds of the success criterion and the Hungarian matching scales."""

    azimuth_deg: float = 2.0
    """|Δφ| allowed for a matched pair (deg); also the matching scale τ_φ."""
    elevation_deg: float = 2.0
    """|Δθ| allowed for a matched pair (deg); also τ_θ."""
    range_abs_m: float = 0.5
    """|Δr| <= max(range_abs_m, range_rel * r); range_abs_m is also τ_r."""
    range_rel: float = 0.1
    """Relative part of the range threshold."""

    def __post_init__(self) -> None:
        for key in ("azimuth_deg", "elevation_deg", "range_abs_m"):
            check(getattr(self, key) > 0, key, getattr(self, key), "must be > 0")
        check(self.range_rel >= 0, "range_rel", self.range_rel, "must be >= 0")


@dataclass(frozen=True)
class SystemConfig:
    """One RIS near-field localization system (see docs/system_model.md)."""

    name: str
    """Short name used in run folders and reports."""
    wavelength_m: float
    """Carrier wavelength λ (m); k0 = 2π/λ."""
    ris_h: int
    """N_H: RIS elements along y (horizontal index i runs fastest in element order)."""
    ris_v: int
    """N_V: RIS elements along z."""
    num_bs_antennas: int
    """M: BS antennas, a half-wavelength linear array."""
    num_snapshots: int
    """L: coded snapshots per scene."""
    max_sources: int
    """K_max: sources per scene are uniform on 1..K_max."""
    azimuth_range_deg: tuple[float, float]
    """Source azimuth φ range (deg)."""
    elevation_range_deg: tuple[float, float]
    """Source elevation θ range (deg)."""
    range_range_m: tuple[float, float]
    """Source range r from the RIS centre (m)."""
    snr_range_db: tuple[float, float]
    """Per-scene SNR (dB), uniform: SNR = Σ_l‖G_l A s_l‖² / (L·M·σ²)."""
    rician_factor_range: tuple[float, float]
    """Rician factor κ of the BS–RIS channel (linear), uniform per scene."""
    source_power_range_db: tuple[float, float] = (0.0, 0.0)
    """Relative source powers p_k (dB), uniform per source and scene."""
    element_spacing_h_m: float = 0.0
    """d_H (m); 0 means λ/2."""
    element_spacing_v_m: float = 0.0
    """d_V (m); 0 means λ/2."""
    bs_azimuth_range_deg: tuple[float, float] = (-60.0, 60.0)
    """Angle of the BS seen from the RIS (LoS part of H), azimuth (deg)."""
    bs_elevation_range_deg: tuple[float, float] = (-30.0, 30.0)
    """Angle of the BS seen from the RIS, elevation (deg)."""
    bs_departure_range_deg: tuple[float, float] = (-60.0, 60.0)
    """Angle of departure at the BS array towards the RIS (deg)."""
    min_separation_cells: float = 1.0
    """Minimum Euclidean distance between any two sources in resolution cells of (u, w, 1/r)."""
    samp_delta_rel: float = 1e-2
    """δ of R_samp's back-projection, relative to tr(G_l G_l^H)/M."""
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    """The RIS phase codes applied at each snapshot."""
    success: SuccessConfig = field(default_factory=SuccessConfig)
    """Thresholds of the success criterion and the matching scales."""

    def __post_init__(self) -> None:
        check(self.wavelength_m > 0, "wavelength_m", self.wavelength_m, "must be > 0")
        for key in ("ris_h", "ris_v", "num_bs_antennas", "num_snapshots"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        check(self.max_sources >= 1, "max_sources", self.max_sources, "K_max must be >= 1")
        check(self.max_sources < self.num_elements, "max_sources", self.max_sources,
              f"K_max must be < N = {self.num_elements} for a noise subspace")
        _check_interval("azimuth_range_deg", self.azimuth_range_deg, -90.0, 90.0)
        _check_interval("elevation_range_deg", self.elevation_range_deg, -90.0, 90.0)
        _check_interval("range_range_m", self.range_range_m)
        check(self.range_range_m[0] > 0, "range_range_m", self.range_range_m, "ranges must be > 0")
        _check_interval("snr_range_db", self.snr_range_db, allow_point=True)
        _check_interval("rician_factor_range", self.rician_factor_range, lo=0.0, allow_point=True)
        _check_interval("source_power_range_db", self.source_power_range_db, allow_point=True)
        _check_interval("bs_azimuth_range_deg", self.bs_azimuth_range_deg, -90.0, 90.0, allow_point=True)
        _check_interval("bs_elevation_range_deg", self.bs_elevation_range_deg, -90.0, 90.0, allow_point=True)
        _check_interval("bs_departure_range_deg", self.bs_departure_range_deg, -90.0, 90.0, allow_point=True)
        check(self.element_spacing_h_m >= 0, "element_spacing_h_m", self.element_spacing_h_m, "must be >= 0")
        check(self.element_spacing_v_m >= 0, "element_spacing_v_m", self.element_spacing_v_m, "must be >= 0")
        check(self.min_separation_cells >= 0, "min_separation_cells", self.min_separation_cells, "must be >= 0")
        check(self.samp_delta_rel > 0, "samp_delta_rel", self.samp_delta_rel, "must be > 0")
        cb = self.codebook
        if cb.kind == "hadamard":
            n = self.num_elements
            check(n & (n - 1) == 0, "codebook.kind", cb.kind, f"Hadamard needs N a power of 2, N = {n}")
        check(self.codebook_size >= self.num_snapshots, "codebook.size", self.codebook_size,
              f"codebook smaller than L = {self.num_snapshots}")

    # Derived quantities (not config keys).
    @property
    def num_elements(self) -> int:
        """N = N_H·N_V."""
        return self.ris_h * self.ris_v

    @property
    def spacing_h_m(self) -> float:
        return self.element_spacing_h_m or self.wavelength_m / 2

    @property
    def spacing_v_m(self) -> float:
        return self.element_spacing_v_m or self.wavelength_m / 2

    @property
    def dft_beams(self) -> tuple[int, int]:
        return (self.codebook.beams_h or self.ris_h, self.codebook.beams_v or self.ris_v)

    @property
    def codebook_size(self) -> int:
        cb = self.codebook
        if cb.kind == "dft":
            kh, kv = self.dft_beams
            return kh * kv
        if cb.kind == "random":
            return cb.size or self.num_elements
        return self.num_elements


def config_dir() -> Path:
    """Where named configs live: $RIS_DIST_CONFIG_DIR, else the source checkout's ``configs/``,
    else ``./configs`` (a non-editable install run from the repository root)."""
    env = os.environ.get("RIS_DIST_CONFIG_DIR")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[2] / "configs"
    return checkout if checkout.is_dir() else Path.cwd() / "configs"


def resolve_named(kind: str, name_or_path: str | os.PathLike) -> Path:
    """``"tiny"`` → ``configs/<kind>/tiny.yaml``; anything with a suffix or a slash is a path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return Path(text)
    path = config_dir() / kind / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))
        raise ConfigError(f"{kind} config {text!r}: not found (known: {', '.join(known)}; or pass a YAML path)")
    return path


def system_from_dict(data: dict[str, Any], where: str = "") -> SystemConfig:
    return build(SystemConfig, data, where=where)


def load_system(name_or_path: str | os.PathLike = "tiny", **overrides: Any) -> SystemConfig:
    """Load and validate a system config.

    ``name_or_path`` is ``"tiny"``, ``"full"`` or a YAML path. ``overrides`` are keys to
    replace, dotted for nested ones: ``load_system("tiny", **{"codebook.kind": "random"})``
    or ``load_system("tiny", num_snapshots=8)``.
    """
    path = resolve_named("system", name_or_path)
    data = apply_overrides(read_yaml(path), overrides)
    return system_from_dict(data, where=f"{path}: ")
