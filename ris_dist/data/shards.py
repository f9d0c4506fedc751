"""Frozen splits on disk: per-scene fields in .npy shards plus a checksummed manifest.

A scene stores only what cannot be recomputed cheaply — y, H, code indices, the scene
parameters — a few KB each; codewords, R_true and R_samp are rebuilt on load with the
same physics functions ``simulate`` uses, so there is one code path. Layout::

    DIR/manifest.json          format, system config, seed, split, count, shard list
    DIR/shard-00000/y.npy      [n, L, M] complex64   (one file per field, see FIELDS)
    DIR/shard-00001/...

The manifest lists, per shard, its scene range and, per file, shape, dtype, byte size
and sha256. Readers memory-map every file, so resident memory does not grow with the
split size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

import ris_dist

from ..config import SystemConfig, system_from_dict, to_dict
from ..physics import SceneBatch, code_indices, codes_from_indices, rng, sample_covariance, simulate, true_covariance

log = logging.getLogger(__name__)

FORMAT_NAME = "ris_dist.frozen_split"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_HASH_CHUNK_BYTES = 1 << 20
_OPEN_SHARDS = 32  # memory-mapped shards kept open (each file holds a file descriptor)


class DataError(ValueError):
    """A frozen split on disk is missing, inconsistent or corrupt. One line, naming the file."""


def _field_shapes(system: SystemConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per-scene ``field -> (dtype, shape)``; the order is the order of files in a shard."""
    L, M, N, K = system.num_snapshots, system.num_bs_antennas, system.num_elements, system.max_sources
    return {
        "indices": ("int64", ()),
        "y": ("complex64", (L, M)),
        "H": ("complex64", (M, N)),
        "code_index": ("int32", (L,)),
        "snr_db": ("float32", ()),
        "noise_var": ("float32", ()),
        "kappa": ("float32", ()),
        "num_sources": ("int64", ()),
        "valid": ("bool", (K,)),
        "azimuth_deg": ("float32", (K,)),
        "elevation_deg": ("float32", (K,)),
        "range_m": ("float32", (K,)),
        "powers": ("float32", (K,)),
    }


def _sha256(path: Path) -> str:
    """sha256 of a file, streamed in chunks so big shards never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _scene_fields(system: SystemConfig, batch: SceneBatch, seed: int, split: str) -> dict[str, np.ndarray]:
    """The stored per-scene fields of a simulated batch, as CPU numpy arrays."""
    keys = rng.scene_keys(seed, split, batch.indices)
    # The code selection is a pure function of the scene key, the same call simulate makes.
    codes_idx = code_indices(system, keys)
    out = {name: getattr(batch, name) for name in _field_shapes(system) if name != "code_index"}
    out["code_index"] = codes_idx
    return {name: t.detach().cpu().numpy() for name, t in out.items()}


def write_split(
    system: SystemConfig,
    seed: int,
    split: str,
    num_scenes: int,
    out_dir: str | os.PathLike,
    shard_size: int = 4096,
    device: str | torch.device | None = None,
    progress: bool = True,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Simulate scenes ``0..num_scenes-1`` of ``(seed, split)`` and freeze them in ``out_dir``.

    Scenes are generated ``batch_size`` at a time on ``device`` and written into
    memory-mapped .npy files, so memory stays bounded for any ``shard_size``. Everything
    goes to a temporary sibling folder that is renamed to ``out_dir`` at the end, so a
    crash never leaves a half-written split under the final name. ``out_dir`` must not
    exist or be empty. Returns the manifest.
    """
    if num_scenes < 1 or shard_size < 1 or batch_size < 1:
        raise ValueError(f"num_scenes, shard_size and batch_size must be >= 1, "
                         f"got {num_scenes}, {shard_size}, {batch_size}")
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DataError(f"{out_dir}: already exists and is not an empty folder; refusing to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left by a crashed writer with our pid; never a finished split
    tmp_dir.mkdir()
    try:
        manifest = _write_shards(system, seed, split, num_scenes, tmp_dir, shard_size, device, progress, batch_size)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked above); rename cannot replace a folder
    os.rename(tmp_dir, out_dir)
    log.info("wrote %d scenes in %d shards to %s", num_scenes, len(manifest["shards"]), out_dir)
    return manifest


def _write_shards(system: SystemConfig, seed: int, split: str, num_scenes: int, tmp_dir: Path,
                  shard_size: int, device, progress: bool, batch_size: int) -> dict[str, Any]:
    fields = _field_shapes(system)
    shards = []
    bar = tqdm(total=num_scenes, unit="scene", desc=f"{system.name}/{split}", disable=not progress)
    for shard_no, start in enumerate(range(0, num_scenes, shard_size)):
        stop = min(start + shard_size, num_scenes)
        shard_name = f"shard-{shard_no:05d}"
        (tmp_dir / shard_name).mkdir()
        arrays = {
            name: np.lib.format.open_memmap(tmp_dir / shard_name / f"{name}.npy", mode="w+",
                                            dtype=np.dtype(dtype), shape=(stop - start, *shape))
            for name, (dtype, shape) in fields.items()
        }
        for lo in range(start, stop, batch_size):
            hi = min(lo + batch_size, stop)
            batch = simulate(system, torch.arange(lo, hi, dtype=torch.int64), seed, split, device=device)
            for name, value in _scene_fields(system, batch, seed, split).items():
                arrays[name][lo - start:hi - start] = value
            bar.update(hi - lo)
        files = {}
        for name, arr in arrays.items():
            arr.flush()
            path = tmp_dir / shard_name / f"{name}.npy"
            files[name] = {"file": path.name, "dtype": str(arr.dtype), "shape": list(arr.shape),
                           "bytes": path.stat().st_size, "sha256": _sha256(path)}
        del arrays  # close the memory maps before the folder is renamed
        shards.append({"dir": shard_name, "start": start, "stop": stop, "files": files})
    bar.close()

    total_bytes = sum(f["bytes"] for s in shards for f in s["files"].values())
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created_by": f"ris_dist {ris_dist.__version__}",
        "system": to_dict(system),
        "seed": int(seed),
        "split": split,
        "count": num_scenes,
        "fields": {name: {"dtype": d, "shape": list(s)} for name, (d, s) in fields.items()},
        "total_bytes": total_bytes,
        "bytes_per_scene": total_bytes / num_scenes,
        "shards": shards,
    }
    path = tmp_dir / MANIFEST
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())  # the manifest is what marks the split complete
    return manifest


# ---------------------------------------------------------------------------------- reader


def _get(mapping: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    """``mapping[key]`` checked for type; a one-line DataError naming the file and key otherwise."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise DataError(f"{path}: key {where}{key} is missing")
    value = mapping[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise DataError(f"{path}: key {where}{key} has an invalid value {value!r:.80}")
    return value


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be an object, got {type(data).__name__}")
    if _get(data, "format", str, "", path) != FORMAT_NAME:
        raise DataError(f"{path}: key format is {data['format']!r}, expected {FORMAT_NAME!r}")
    if _get(data, "format_version", int, "", path) != FORMAT_VERSION:
        raise DataError(f"{path}: key format_version is {data['format_version']}, this reader supports "
                        f"{FORMAT_VERSION}")
    return data


def _check_file(path: Path, entry: dict[str, Any], verify: bool, manifest: Path) -> None:
    """Existence, byte size and (with ``verify``) sha256 of one shard file."""
    if not path.is_file():
        raise DataError(f"{path}: missing (listed in {manifest})")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DataError(f"{path}: size {size} bytes, manifest says {entry['bytes']} (truncated or replaced?)")
    if verify:
        actual = _sha256(path)
        if actual != entry["sha256"]:
            raise DataError(f"{path}: sha256 mismatch (manifest {entry['sha256'][:12]}..., file {actual[:12]}...)")


class FrozenSplit(Dataset):
    """A split read from disk by :func:`load_split`; scenes are its positions ``0..len-1``.

    Scene ``i`` is global index ``i`` of ``(seed, split)``: ``get(idx)`` equals
    ``simulate(system, idx, seed, split)`` within float32 tolerance.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], system: SystemConfig) -> None:
        self.root = root
        self.system = system
        self.seed: int = manifest["seed"]
        self.split: str = manifest["split"]
        self.manifest = manifest
        self._starts = np.array([s["start"] for s in manifest["shards"]], dtype=np.int64)
        self._open: OrderedDict[int, dict[str, np.memmap]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; DataLoader workers re-open the files instead.
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

    def shard_arrays(self, shard_no: int) -> dict[str, np.memmap]:
        """The read-only memory maps of one shard, ``field -> [n, ...]`` (a small LRU stays open)."""
        if shard_no in self._open:
            self._open.move_to_end(shard_no)
            return self._open[shard_no]
        shard = self.manifest["shards"][shard_no]
        arrays = {name: _open_npy(self.root / shard["dir"] / entry["file"], entry)
                  for name, entry in shard["files"].items()}
        self._open[shard_no] = arrays
        if len(self._open) > _OPEN_SHARDS:
            self._open.popitem(last=False)
        return arrays

    def fields(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """Stored fields of scenes ``indices`` gathered from their shards, ``field -> [B, ...]``."""
        idx = np.asarray(torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu())
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))][0]
            raise IndexError(f"scene index {int(bad)} out of range 0..{len(self) - 1}")
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        out = {name: np.empty((idx.size, *spec["shape"]), dtype=np.dtype(spec["dtype"]))
               for name, spec in self.manifest["fields"].items()}
        for shard_no in np.unique(shard_of):
            rows = np.nonzero(shard_of == shard_no)[0]
            local = idx[rows] - self._starts[shard_no]
            for name, arr in self.shard_arrays(int(shard_no)).items():
                out[name][rows] = arr[local]
        if not np.array_equal(out["indices"], idx):
            raise DataError(f"{self.root}: stored scene indices do not match positions (shard layout corrupt)")
        return out

    def get(self, indices: Sequence[int] | np.ndarray | torch.Tensor, device=None) -> SceneBatch:
        """Scenes ``indices`` as a SceneBatch on ``device``; codes, R_true, R_samp rebuilt there."""
        f = {name: torch.from_numpy(arr).to(device) for name, arr in self.fields(indices).items()}
        codes = codes_from_indices(self.system, f["code_index"].to(torch.int64))
        return SceneBatch(
            indices=f["indices"], y=f["y"], H=f["H"], codes=codes,
            snr_db=f["snr_db"], noise_var=f["noise_var"], kappa=f["kappa"],
            num_sources=f["num_sources"], valid=f["valid"],
            azimuth_deg=f["azimuth_deg"], elevation_deg=f["elevation_deg"],
            range_m=f["range_m"], powers=f["powers"],
            R_true=true_covariance(self.system, f["azimuth_deg"], f["elevation_deg"], f["range_m"], f["powers"]),
            R_samp=sample_covariance(self.system, f["y"], f["H"], codes),
        )

    def batches(self, batch_size: int, device=None) -> Iterator[SceneBatch]:
        """All scenes in order, ``batch_size`` at a time (the last batch may be short)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.get(np.arange(start, min(start + batch_size, len(self))), device=device)

    def __getitems__(self, indices: Sequence[int]) -> SceneBatch:
        return self.get(indices)

    def __getitem__(self, index: int) -> SceneBatch:
        return self.get([int(index)])


def _open_npy(path: Path, entry: dict[str, Any]) -> np.memmap:
    """Memory-map one .npy read-only and check it against its manifest entry."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    if list(arr.shape) != entry["shape"] or str(arr.dtype) != entry["dtype"]:
        raise DataError(f"{path}: holds {arr.dtype}{list(arr.shape)}, manifest says {entry['dtype']}{entry['shape']}")
    return arr


def load_split(root: str | os.PathLike, verify: bool = True) -> FrozenSplit:
    """Open a frozen split: check its manifest, every file's size, dtype and shape, and
    (with ``verify``) every file's sha256, streamed in chunks. Raises :class:`DataError`
    (or :class:`~ris_dist.config.ConfigError` for a bad system config, naming the manifest).
    """
    root = Path(root)
    mpath = root / MANIFEST
    m = _read_manifest(mpath)
    system = system_from_dict(_get(m, "system", dict, "", mpath), where=f"{mpath}: system.")
    _get(m, "seed", int, "", mpath)
    _get(m, "split", str, "", mpath)
    count = _get(m, "count", int, "", mpath)
    expected = {name: {"dtype": d, "shape": list(s)} for name, (d, s) in _field_shapes(system).items()}
    if _get(m, "fields", dict, "", mpath) != expected:
        raise DataError(f"{mpath}: key fields does not match the system config (expected {expected})")
    shards = _get(m, "shards", list, "", mpath)
    if not shards:
        raise DataError(f"{mpath}: key shards is empty")

    next_start = 0
    for i, shard in enumerate(shards):
        where = f"shards[{i}]."
        name = _get(shard, "dir", str, where, mpath)
        start, stop = _get(shard, "start", int, where, mpath), _get(shard, "stop", int, where, mpath)
        if start != next_start or stop <= start:
            raise DataError(f"{mpath}: key {where}start/stop [{start}, {stop}) does not continue at {next_start}")
        next_start = stop
        files = _get(shard, "files", dict, where, mpath)
        if set(files) != set(expected):
            raise DataError(f"{mpath}: key {where}files lists {sorted(files)}, expected {sorted(expected)}")
        for field, spec in expected.items():
            entry = _get(files, field, dict, f"{where}files.", mpath)
            fwhere = f"{where}files.{field}."
            for key, kind in (("file", str), ("dtype", str), ("shape", list), ("bytes", int), ("sha256", str)):
                _get(entry, key, kind, fwhere, mpath)
            if entry["dtype"] != spec["dtype"] or entry["shape"] != [stop - start, *spec["shape"]]:
                raise DataError(f"{mpath}: key {fwhere}shape/dtype {entry['dtype']}{entry['shape']} does not "
                                f"match {spec['dtype']}{[stop - start, *spec['shape']]}")
            path = root / name / entry["file"]
            _check_file(path, entry, verify, mpath)
            _open_npy(path, entry)  # header check now, so a bad file fails at load, not mid-epoch
    if next_start != count:
        raise DataError(f"{mpath}: key count is {count}, shards cover {next_start} scenes")
    log.info("loaded %s: %d scenes, %d shards%s", root, count, len(shards), ", sha256 verified" if verify else "")
    return FrozenSplit(root, m, system)
