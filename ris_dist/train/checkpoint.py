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


def latest_valid(root: Path) -> Path | None:
    valid = list_valid(root)
    return valid[-1] if valid else None


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
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: missing trainer state")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{state_file}: invalid JSON ({err})") from None
    check_resumable(state, state_file, world_size, backend)
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
