"""One training precision, ``amp.dtype``, for every backend and launcher.

``amp.dtype`` is the single source of truth. ``accelerate launch --mixed_precision X`` (which
reaches the trainer as ``ACCELERATE_MIXED_PRECISION``) must agree with it, and under DeepSpeed
the trainer writes the engine's ``fp16``/``bf16`` blocks from it. A launcher flag or a JSON
value that says otherwise is refused, because either would otherwise win silently: the JSON
decides what the engine casts to, and the launcher flag what Accelerate autocasts to.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import ConfigError

LAUNCH_ENV = "ACCELERATE_MIXED_PRECISION"
DS_CONFIG_ENV = "ACCELERATE_DEEPSPEED_CONFIG_FILE"
_AUTO = "auto"


def check_launch_precision(amp_dtype: str, env: Mapping[str, str] = os.environ) -> None:
    """Refuse ``accelerate launch --mixed_precision X`` when X is not ``no`` and differs from amp.dtype.

    ``no`` (the shipped accelerate YAMLs) means Accelerate adds no AMP of its own, and the
    trainer applies ``amp.dtype`` itself.
    """
    launched = env.get(LAUNCH_ENV, "no").strip().lower() or "no"
    if launched not in ("no", amp_dtype):
        raise ConfigError(f"accelerate launch --mixed_precision {launched} ({LAUNCH_ENV}) contradicts "
                          f"amp.dtype={amp_dtype}: set amp.dtype={launched} or launch with --mixed_precision no")


def read_deepspeed_json(env: Mapping[str, str] = os.environ) -> tuple[dict[str, Any], str]:
    """The DeepSpeed JSON as written on disk (before Accelerate fills ``auto``), and its name for errors."""
    path = env.get(DS_CONFIG_ENV)
    if not path:
        return {}, "the DeepSpeed plugin"
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable DeepSpeed config ({' '.join(str(err).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object")
    return raw, path


def deepspeed_precision_blocks(raw: Mapping[str, Any], source: str, amp_dtype: str,
                               init_scale: float) -> dict[str, dict[str, Any]]:
    """The ``fp16`` and ``bf16`` blocks the engine gets for ``amp_dtype``.

    ``enabled`` may be ``"auto"`` or absent in the JSON; a boolean that disagrees with
    ``amp_dtype`` raises :class:`ConfigError` naming the file and the key. Under fp16 the
    dynamic scaler starts at ``amp.init_scale`` and, unless the JSON says otherwise, halves on
    every overflow (hysteresis 1), as torch's GradScaler does under DDP.
    """
    blocks: dict[str, dict[str, Any]] = {}
    for name in ("fp16", "bf16"):
        block = raw.get(name, {})
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {name} must be an object, got {json.dumps(block)}")
        wanted = amp_dtype == name
        enabled = block.get("enabled", _AUTO)
        if enabled != _AUTO and enabled is not wanted:
            raise ConfigError(f"{source}: {name}.enabled={json.dumps(enabled)} contradicts amp.dtype={amp_dtype} "
                              f"(use \"auto\" and let amp.dtype decide)")
        out = {**block, "enabled": wanted}
        if wanted and name == "fp16":
            power = math.log2(init_scale)
            if not power.is_integer():
                raise ConfigError(f"amp.init_scale={init_scale:g}: DeepSpeed fp16 needs a power of 2 "
                                  f"(initial_scale_power)")
            if out.get("initial_scale_power", int(power)) != int(power):
                raise ConfigError(f"{source}: fp16.initial_scale_power={out['initial_scale_power']} contradicts "
                                  f"amp.init_scale={init_scale:g} (2^{int(power)})")
            out.setdefault("loss_scale", 0)
            out["initial_scale_power"] = int(power)
            out.setdefault("hysteresis", 1)
        blocks[name] = out
    return blocks
