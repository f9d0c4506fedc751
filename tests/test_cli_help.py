"""``python -m ris_dist.train --help / --list-keys / --print-config``: discoverable, documented, torch-free.

The docs shown are the config dataclasses' field docstrings; every field reachable from
TrainConfig must have one (so a new undocumented field fails here).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

import pytest
import yaml

from ris_dist.config.schema import field_docs
from ris_dist.config.system import SystemConfig
from ris_dist.train.config import DataConfig, TrainConfig, load_train_config

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "ris_dist.train", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)


def imported_torch(importtime_stderr: str) -> list[str]:
    """Modules named torch or torch.* in ``-X importtime`` output (``import time: self | cumulative | name``)."""
    names = [line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines()
             if line.startswith("import time:")]
    return [n for n in names if n == "torch" or n.startswith("torch.")]


def reachable_fields(cls: type, prefix: str = "") -> list[tuple[type, str, str]]:
    """(dataclass, field, dotted key) of every field reachable from ``cls``, found independently of
    ris_dist.config.describe: nested dataclasses, Optional[dataclass], dict[str, dataclass], and
    system_overrides, whose keys are SystemConfig's."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        out.append((cls, f.name, key))
        if get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            out += reachable_fields(tp, key + ".")
        elif get_origin(tp) is dict and dataclasses.is_dataclass(get_args(tp)[1]):
            out += reachable_fields(get_args(tp)[1], key + ".<name>.")
        elif key == "system_overrides":
            out += reachable_fields(SystemConfig, key + ".")
    return out


def undocumented(cls: type) -> list[str]:
    return [key for owner, name, key in reachable_fields(cls) if not field_docs(owner).get(name)]


@pytest.mark.parametrize("args", [("--help",), ("--list-keys",), ("--config", "phase1", "--print-config")])
def test_cli_documentation_never_imports_torch(args):
    proc = cli(*args, importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()
    assert imported_torch(proc.stderr) == [], f"{' '.join(args)} imported {imported_torch(proc.stderr)[:5]}"


def test_the_torch_check_sees_torch():
    probe = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ris_dist.train.progress, torch"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "torch" in imported_torch(probe.stderr)


def test_help_lists_every_section_with_its_doc():
    out = cli("--help").stdout
    sections = [f.name for f in dataclasses.fields(TrainConfig)
                if dataclasses.is_dataclass(get_type_hints(TrainConfig)[f.name])]
    assert {"data", "optim", "log", "profile", "val"} <= set(sections)
    joined = " ".join(out.split())  # the epilog wraps long docs
    for name in sections:
        doc = field_docs(TrainConfig)[name]
        assert f" {name} {doc}" in joined, f"section {name} or its doc missing from --help"


def test_every_reachable_field_is_documented_and_listed():
    missing = undocumented(TrainConfig)
    assert not missing, f"config fields without a docstring (add one below the field): {missing}"
    listed = {line.split()[0] for line in cli("--list-keys").stdout.splitlines() if line and not line[0].isspace()}
    keys = [key for _, _, key in reachable_fields(TrainConfig)]
    assert len(keys) > 100  # the walk reached the nested sections
    assert set(keys) <= listed, f"missing from --list-keys: {sorted(set(keys) - listed)[:10]}"


@dataclasses.dataclass(frozen=True)
class _Inner:
    documented: int = 1
    """Has a doc."""
    bare: int = 2


@dataclasses.dataclass(frozen=True)
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    """Nested section."""


def test_an_undocumented_field_is_caught():
    assert undocumented(_Outer) == ["inner.bare"]


def test_list_keys_shows_type_default_and_doc():
    lines = cli("--list-keys").stdout.splitlines()
    at = lines.index("data.batch_size  int = 64")
    assert lines[at + 1].strip().startswith(field_docs(DataConfig)["batch_size"][:40])
    assert "log.progress_interval_s  float = 60.0" in lines
    assert "profile.steps  tuple[int, int] | None = null" in lines
    assert "phase  str = required" in lines


def test_print_config_is_the_resolved_config_with_docs(tmp_path):
    proc = cli("--config", "phase1", "--print-config", "optim.lr=3e-4", "profile.steps=[2,5]")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "  lr: 0.0003  # Backbone learning rate (peak)." in text.splitlines()
    for line in text.splitlines():
        assert "  # " in line, f"no doc comment: {line!r}"
    # Reading the printed YAML back gives the same config.
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert load_train_config(path) == load_train_config("phase1", ["optim.lr=3e-4", "profile.steps=[2,5]"])
    assert yaml.safe_load(text)["profile"]["steps"] == [2, 5]


@pytest.mark.parametrize("args, needle", [
    (("--config", "phase1", "--print-config", "optim.lrr=1"), "optim.lrr: unknown key"),
    (("--config", "phase1", "--print-config", "log.trackers=[tensorbord]"), "log.trackers[0]: must be one of"),
    (("--config", "phase0", "--print-config", "profile.steps=[3,2]"), "profile.steps: needs 1 <= first < last"),
])
def test_bad_keys_are_one_line_errors_exit_2(args, needle):
    proc = cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr


def test_config_is_required_to_train():
    proc = cli("optim.lr=1e-3")
    assert proc.returncode == 2 and "--config is required" in proc.stderr
