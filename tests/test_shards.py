"""Frozen splits: round trip against simulate, integrity checks, memory mapping, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ris_dist.config import ConfigError, load_system
from ris_dist.data import DataError, load_split, write_split
from ris_dist.physics import SceneBatch, simulate

from scene_asserts import assert_same_scenes

SEED = 7
SPLIT = "test"
COUNT = 45  # 3 shards of 16, the last short


@pytest.fixture(scope="module")
def written(tmp_path_factory, system) -> Path:
    out = tmp_path_factory.mktemp("frozen") / "tiny-test"
    write_split(system, SEED, SPLIT, COUNT, out, shard_size=16, progress=False, batch_size=7)
    return out


@pytest.fixture
def copy(written: Path, tmp_path: Path) -> Path:
    """A private copy to corrupt."""
    dst = tmp_path / "copy"
    shutil.copytree(written, dst)
    return dst


def test_round_trip_reproduces_simulate(written: Path, system) -> None:
    split = load_split(written)
    assert len(split) == COUNT and split.seed == SEED and split.split == SPLIT and split.system == system
    idx = [44, 0, 15, 16, 31, 32, 5]  # unsorted, across every shard boundary
    assert_same_scenes(split.get(idx), simulate(system, idx, SEED, SPLIT))
    assert_same_scenes(split.__getitems__(idx), split.get(idx))
    assert_same_scenes(split[16], simulate(system, [16], SEED, SPLIT))
    batches = list(split.batches(20))
    assert [len(b) for b in batches] == [20, 20, 5]
    assert_same_scenes(SceneBatch.cat(batches), simulate(system, torch.arange(COUNT), SEED, SPLIT))
    with pytest.raises(IndexError):
        split.get([COUNT])


def test_dataloader_workers_reopen_the_memory_maps(written: Path, system) -> None:
    from torch.utils.data import DataLoader

    from ris_dist.data import collate_scene_batches

    split = load_split(written, verify=False)
    split.get([0])  # opens a shard; pickling to workers must not copy its arrays
    loader = DataLoader(split, batch_size=16, num_workers=2, collate_fn=collate_scene_batches)
    assert_same_scenes(SceneBatch.cat(list(loader)), simulate(system, torch.arange(COUNT), SEED, SPLIT))


def test_manifest_layout(written: Path) -> None:
    m = json.loads((written / "manifest.json").read_text())
    assert m["count"] == COUNT and m["seed"] == SEED and m["split"] == SPLIT
    assert [(s["start"], s["stop"]) for s in m["shards"]] == [(0, 16), (16, 32), (32, 45)]
    y = m["shards"][2]["files"]["y"]
    assert y["dtype"] == "complex64" and y["shape"] == [13, 16, 8] and len(y["sha256"]) == 64
    assert m["shards"][0]["files"]["code_index"]["dtype"] == "int32"
    assert not any(p.name.startswith(".") for p in written.parent.iterdir()), "temp folder left behind"


def test_reads_are_memory_mapped(written: Path) -> None:
    split = load_split(written, verify=False)
    arrays = split.shard_arrays(1)
    for name, arr in arrays.items():
        assert isinstance(arr, np.memmap), name
        assert not arr.flags.writeable, name


def test_full_scene_costs_under_50_kb(tmp_path: Path) -> None:
    full = load_system("full")
    m = write_split(full, SEED, SPLIT, 4, tmp_path / "full", shard_size=4, progress=False)
    assert m["total_bytes"] / m["count"] < 50_000
    assert m["bytes_per_scene"] < 50_000


def test_flipped_byte_fails_verification(copy: Path) -> None:
    path = copy / "shard-00001" / "H.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-00001/H\.npy: sha256 mismatch \(manifest [0-9a-f]+\.\.\., file"):
        load_split(copy)
    assert len(load_split(copy, verify=False)) == COUNT  # sizes still agree; only sha256 sees it


def test_deleted_file(copy: Path) -> None:
    (copy / "shard-00002" / "valid.npy").unlink()
    with pytest.raises(DataError, match=r"shard-00002/valid\.npy: missing"):
        load_split(copy, verify=False)


def test_truncated_file(copy: Path) -> None:
    path = copy / "shard-00000" / "y.npy"
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 64)
    with pytest.raises(DataError, match=r"shard-00000/y\.npy: size \d+ bytes, manifest says \d+"):
        load_split(copy)


def test_missing_manifest(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: manifest not found"):
        load_split(copy)


def test_unknown_system_key_names_the_manifest(copy: Path) -> None:
    path = copy / "manifest.json"
    m = json.loads(path.read_text())
    m["system"]["antenna_magic"] = 3
    path.write_text(json.dumps(m))
    with pytest.raises(ConfigError, match=r"manifest\.json: system\.antenna_magic: unknown key"):
        load_split(copy)


@pytest.mark.parametrize("edit,pattern", [
    (lambda m: m.pop("shards"), r"manifest\.json: key shards is missing"),
    (lambda m: m["shards"][1].update(start=17), r"manifest\.json: key shards\[1\]\.start/stop"),
    (lambda m: m.update(count=46), r"manifest\.json: key count is 46"),
    (lambda m: m.update(format_version=99), r"manifest\.json: key format_version is 99"),
])
def test_inconsistent_manifest(copy: Path, edit, pattern: str) -> None:
    path = copy / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=pattern):
        load_split(copy, verify=False)


def test_refuses_to_overwrite(written: Path, system) -> None:
    with pytest.raises(DataError, match="refusing to overwrite"):
        write_split(system, SEED, SPLIT, 4, written, progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "ris_dist.data", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_generate_verify_and_corruption(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    gen = _cli("generate", "--system", "tiny", "--split", "val", "--num-scenes", "10", "--out", str(out),
               "--seed", "3", "--shard-size", "4", "--device", "cpu", "--no-progress")
    assert gen.returncode == 0, gen.stderr
    assert "10 scenes in 3 shards" in gen.stdout

    ok = _cli("verify", str(out))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("OK ") and "10 scenes in 3 shards" in ok.stdout and len(ok.stdout.splitlines()) == 1

    path = out / "shard-00001" / "y.npy"
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    bad = _cli("verify", str(out))
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "y.npy: sha256 mismatch" in bad.stderr
    assert "Traceback" not in bad.stderr
