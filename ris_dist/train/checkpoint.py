"""Atomic, resumable checkpoints.

Every rank takes part in ``accelerator.save_state`` (model, optimizer, RNG states, and the
registered scheduler, fp16 GradScaler, EMA and SWA), into a temporary folder. The main process
then writes ``trainer_state.json`` (step, epoch, stream position, gate counters, and the world
size and backend that wrote it), fsyncs,
renames the folder into place and writes the ``COMPLETE`` marker last. A folder without
the marker is never loaded, so a crash mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
from pathlib import Path
from typing import Any

import torch

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
BEST_WEIGHTS = "model.pt"

logger = logging.getLogger("ris_dist.train")


class CheckpointError(RuntimeError):
    """A checkpoint folder is unusable; the message names the folder and what is wrong."""


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as fh:
                os.fsync(fh.fileno())
        fd = os.open(dirpath, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_valid(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def read_trainer_state(path: Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of checkpoint folder ``path``; CheckpointError names the file."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: missing trainer state")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{state_file}: invalid JSON ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("trainer"), dict):
        raise CheckpointError(f"{state_file}: no 'trainer' mapping (not written by the trainer)")
    return state


def latest_valid(root: Path) -> Path | None:
    """The newest complete checkpoint whose trainer state reads; None when there is none.

    A folder with a missing or corrupt ``trainer_state.json`` is skipped with a one-line warning
    naming the file, so a resume falls back to the previous checkpoint. When every complete
    checkpoint is unreadable, the newest one's error is raised: resuming from scratch would
    silently discard the run.
    """
    rejected: CheckpointError | None = None
    for path in reversed(list_valid(root)):
        try:
            read_trainer_state(path)
        except CheckpointError as err:
            logger.warning("skipping checkpoint: %s", err)
            rejected = rejected or err
            continue
        if rejected is not None:
            logger.warning("resuming from the previous checkpoint %s", path)
        return path
    if rejected is not None:
        raise CheckpointError(f"{rejected}; no earlier valid checkpoint under {root}")
    return None


def save(accelerator, root: Path, step: int, trainer_state: dict[str, Any], keep_last: int,
         kill_before_rename: bool = False) -> Path:
    """Collective: every rank must call it at the same step.

    ``kill_before_rename`` is a drill: SIGKILL the main process after the state is written
    and before it is published, which must leave the previous checkpoint as the latest.
    """
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1))
        _fsync_tree(tmp)
        if kill_before_rename:
            os.kill(os.getpid(), signal.SIGKILL)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        marker = final / MARKER
        marker.write_text("ok\n")
        with open(marker, "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(root)
        for old in list_valid(root)[:-keep_last]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _read_json(file: Path, missing: str) -> Any:
    if not file.is_file():
        raise CheckpointError(f"{file}: {missing}")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file}: invalid JSON ({err})") from None


def check_resumable(state: dict[str, Any], state_file: Path, world_size: int, backend: str) -> None:
    """Refuse a resume that DeepSpeed cannot load, before it raises deep inside ``load_checkpoint``.

    ZeRO shards the optimizer state (and, at stage 3, the parameters) per rank, so its
    checkpoint loads only on the world size and backend that wrote it. DDP and one-process
    checkpoints hold full states and resume on any world size.
    """
    saved_world, saved_backend = state.get("world_size"), state.get("backend")
    if saved_backend is None:
        return  # written before these keys existed: nothing to compare
    if saved_backend != backend:
        raise CheckpointError(f"{state_file}: saved by backend {saved_backend} on {saved_world} process(es), "
                              f"resumed with {backend}; resume with the same backend, or start a new phase "
                              f"from its best/ with init_from=<run>/<phase>/best")
    if backend == "deepspeed" and saved_world != world_size:
        raise CheckpointError(f"{state_file}: a DeepSpeed ZeRO checkpoint saved on {saved_world} processes cannot "
                              f"resume on {world_size}; resume on {saved_world}, convert it (DeepSpeed's "
                              f"zero_to_fp32.py or a universal checkpoint, ds_to_universal.py), or start a new "
                              f"phase from best/ with init_from=<run>/<phase>/best")


def load(accelerator, path: Path, world_size: int, backend: str) -> dict[str, Any]:
    """Restore every registered state from ``path`` and return its trainer state.

    ``world_size`` and ``backend`` are the resuming run's; see :func:`check_resumable`.
    """
    if not (path / MARKER).is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MARKER} marker)")
    state = read_trainer_state(path)
    check_resumable(state, path / STATE_FILE, world_size, backend)
    accelerator.load_state(str(path))
    return state


def save_weights(path: Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Model weights only (for init_from and inference), in float32 whatever the training precision, written atomically."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{BEST_WEIGHTS}.tmp"
    torch.save({k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                for k, v in state_dict.items()}, tmp)
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / BEST_WEIGHTS)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Load weights saved by :func:`save_weights` (or the model of a full checkpoint folder)."""
    file = path / BEST_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{path}: no {BEST_WEIGHTS} (expected a folder written by the trainer)")
    try:
        weights = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{file}: unreadable weights ({' '.join(str(err).split())[:200]})") from None
    if not isinstance(weights, dict):
        raise CheckpointError(f"{file}: expected a state dict, got {type(weights).__name__}")
    return weights


def _system_dims(system) -> str:
    return f"N={system.num_elements}, M={system.num_bs_antennas}, L={system.num_snapshots}, K_max={system.max_sources}"


def check_system(path: Path, system) -> None:
    """``path``'s meta.json records a system of the same dimensions as ``system``, else a one-line error.

    Read before the weights, so a checkpoint of another system is refused by name rather than
    by the first tensor whose shape happens to differ. Systems that differ only in their
    distributions (SNR range, codebook) share every shape, and fine-tuning across them is allowed.
    """
    from ..config import load_system

    file = path / "meta.json"
    meta = _read_json(file, "missing (a best/ folder records the system it was trained on)")
    if not isinstance(meta, dict) or not isinstance(meta.get("system"), str):
        raise CheckpointError(f"{file}: key 'system' is missing or not a string")
    theirs = load_system(meta["system"], **meta.get("system_overrides", {}))
    if _system_dims(theirs) != _system_dims(system):
        raise CheckpointError(f"init_from {path}: trained on system {theirs.name!r} ({_system_dims(theirs)}), but "
                              f"this run is system {system.name!r} ({_system_dims(system)}); start from a "
                              "checkpoint of the same system")


def load_init(model: torch.nn.Module, path: Path, system) -> None:
    """Initialize ``model`` from a ``best/`` folder of the same system and model shape (one-line errors)."""
    check_system(path, system)
    weights = load_weights(path)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (this model: {tuple(expected[k].shape)})"
             for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if wrong or missing or unexpected:
        parts = [f"{len(wrong)} shape(s) differ, first {wrong[0]}"] if wrong else []
        parts += [f"missing {missing[0]} and {len(missing) - 1} more"] if missing else []
        parts += [f"unexpected {unexpected[0]} and {len(unexpected) - 1} more"] if unexpected else []
        raise CheckpointError(f"init_from {path}: weights do not fit this model ({'; '.join(parts)}); "
                              "use the model preset they were trained with")
    model.load_state_dict(weights)
