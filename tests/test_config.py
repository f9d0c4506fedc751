"""System config: named configs match the design table, overrides work, bad input fails in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from ris_dist.config import ConfigError, apply_overrides, load_system, parse_overrides, read_yaml, system_from_dict
from ris_dist.config.system import resolve_named

# The "Named configurations" table of docs/system_model.md.
DESIGN = {
    "tiny": dict(ris=(4, 4), M=8, L=16, K_max=2, az=(-60.0, 60.0), el=(-30.0, 30.0), r=(0.3, 2.0)),
    "full": dict(ris=(12, 12), M=16, L=16, K_max=5, az=(-60.0, 60.0), el=(-30.0, 30.0), r=(0.5, 10.0)),
}


@pytest.mark.parametrize("name", sorted(DESIGN))
def test_named_configs_match_design_table(name: str) -> None:
    want = DESIGN[name]
    s = load_system(name)
    assert s.name == name
    assert (s.ris_h, s.ris_v) == want["ris"]
    assert s.num_elements == want["ris"][0] * want["ris"][1]
    assert s.num_bs_antennas == want["M"]
    assert s.num_snapshots == want["L"]
    assert s.max_sources == want["K_max"]
    assert s.azimuth_range_deg == want["az"]
    assert s.elevation_range_deg == want["el"]
    assert s.range_range_m == want["r"]
    # Shared by both configs: λ = 0.3 m, SNR −5..20 dB, κ 0.5..10, 2-D DFT codebook, λ/2 spacing.
    assert s.wavelength_m == pytest.approx(0.3)
    assert s.snr_range_db == (-5.0, 20.0)
    assert s.rician_factor_range == (0.5, 10.0)
    assert s.codebook.kind == "dft"
    assert s.spacing_h_m == pytest.approx(0.15) and s.spacing_v_m == pytest.approx(0.15)


def test_overrides_via_parse_and_apply() -> None:
    ov = parse_overrides(["num_snapshots=8", "codebook.kind=random", "snr_range_db=[0, 10]", "samp_delta_rel=0.001"])
    assert ov == {"num_snapshots": 8, "codebook.kind": "random", "snr_range_db": [0, 10], "samp_delta_rel": 1e-3}
    data = apply_overrides(read_yaml(resolve_named("system", "tiny")), ov)
    s = system_from_dict(data)
    assert s.num_snapshots == 8
    assert s.codebook.kind == "random"
    assert s.snr_range_db == (0.0, 10.0)
    assert s.samp_delta_rel == pytest.approx(1e-3)
    # Untouched nested keys survive the dotted override.
    assert s.codebook.seed == 0


def test_exponent_floats_without_dot() -> None:
    """Regression: YAML 1.1 read '1e-3' (no dot) as a string."""
    assert parse_overrides(["samp_delta_rel=1e-3"]) == {"samp_delta_rel": 1e-3}
    assert load_system("tiny", **parse_overrides(["samp_delta_rel=1e-3"])).samp_delta_rel == pytest.approx(1e-3)


def test_overrides_via_load_system_kwargs() -> None:
    s = load_system("tiny", **{"codebook.kind": "random", "codebook.size": 32}, num_snapshots=8)
    assert s.codebook.kind == "random" and s.codebook.size == 32 and s.codebook_size == 32
    assert s.num_snapshots == 8
    assert load_system("tiny").codebook.kind == "dft"  # no shared mutable state


def test_load_from_path(tmp_path: Path) -> None:
    src = resolve_named("system", "tiny")
    dst = tmp_path / "mine.yaml"
    dst.write_text(src.read_text().replace("name: tiny", "name: mine"))
    assert load_system(str(dst)).name == "mine"


# (overrides, substrings the single-line message must contain: the key and the bad value)
BAD_OVERRIDES = [
    pytest.param({"foo": 1}, ["foo", "unknown key"], id="unknown-top-level"),
    pytest.param({"codebook.foo": 1}, ["codebook.foo", "unknown key"], id="unknown-nested"),
    pytest.param({"num_snapshots": "x"}, ["num_snapshots", "'x'"], id="str-for-int"),
    pytest.param({"ris_h": 2.5}, ["ris_h", "2.5"], id="float-for-int"),
    pytest.param({"num_bs_antennas": True}, ["num_bs_antennas", "True"], id="bool-for-int"),
    pytest.param({"range_range_m": [-1, 2]}, ["range_range_m", "-1"], id="negative-range"),
    pytest.param({"max_sources": 0}, ["max_sources", "0"], id="kmax-zero"),
    pytest.param({"range_range_m": [2.0, 2.0]}, ["range_range_m", "2.0"], id="rmin-eq-rmax"),
    pytest.param({"range_range_m": [3.0, 1.0]}, ["range_range_m", "3.0"], id="rmin-gt-rmax"),
    pytest.param({"codebook.kind": "random", "codebook.size": 8}, ["codebook.size", "8"], id="random-smaller-than-L"),
    pytest.param({"codebook.beams_h": 2, "codebook.beams_v": 2}, ["codebook", "4"], id="dft-smaller-than-L"),
    pytest.param({"codebook.kind": "walsh"}, ["codebook.kind", "walsh"], id="unknown-codebook-kind"),
    pytest.param({"codebook.quant_bits": -1}, ["codebook.quant_bits", "-1"], id="negative-quant-bits"),
    pytest.param({"wavelength_m": 0}, ["wavelength_m", "0"], id="zero-wavelength"),
]


@pytest.mark.parametrize("overrides, needles", BAD_OVERRIDES)
def test_bad_values_raise_one_line_config_error(overrides: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_system("tiny", **overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "tiny.yaml" in msg  # the source file is named too


def test_hadamard_needs_power_of_two() -> None:
    load_system("tiny", **{"codebook.kind": "hadamard"})  # N = 16: fine
    with pytest.raises(ConfigError) as info:
        load_system("full", **{"codebook.kind": "hadamard"})  # N = 144
    msg = str(info.value)
    assert "\n" not in msg and "codebook.kind" in msg and "hadamard" in msg and "144" in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_system(str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: tiny\nris_h: [1, 2\nris_v: 4\n")
    with pytest.raises(ConfigError) as info:
        load_system(str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "YAML" in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError) as info:
        load_system(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_required_key(tmp_path: Path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as info:
        load_system(str(path))
    assert "\n" not in str(info.value) and "required" in str(info.value)


def test_unknown_named_config() -> None:
    with pytest.raises(ConfigError) as info:
        load_system("gigantic")
    msg = str(info.value)
    assert "\n" not in msg and "gigantic" in msg and "tiny" in msg  # lists the known names


@pytest.mark.parametrize("item", ["no_equals_sign", "=3", "a..b=1", "x=[1, 2"])
def test_bad_override_strings(item: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert "\n" not in str(info.value)


def test_override_through_non_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        load_system("tiny", **{"ris_h.x": 1})
    assert "\n" not in str(info.value) and "ris_h" in str(info.value)
