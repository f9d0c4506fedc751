"""Run monitoring: instrumentation log lines, metrics.jsonl and the experiment trackers.

Only the main process writes. Scalars go to metrics.jsonl and, through ``accelerator.log``,
to every tracker of ``log.trackers`` (TensorBoard by default); every instrumentation line
(``[LR]``, ``[GRAD]``, ``[VAL]``, ``[SELFTEST]``) has a scalar twin so the views never
disagree. Images, text and hparams exist on TensorBoard only; they go to its writer
(``accelerator.get_tracker("tensorboard", unwrap=True)``) when that tracker is on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from ..config.schema import to_dict

logger = logging.getLogger("ris_dist.train")


def setup_logging(is_main: bool, rank: int) -> None:
    fmt = f"%(asctime)s [rank{rank}] %(message)s"
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        force=True)
    # Accelerate logs every file of every save_state/load_state at INFO: a few lines per
    # checkpoint that bury the run's own lines in a SLURM log.
    logging.getLogger("accelerate").setLevel(logging.WARNING)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def flat_params(cfg) -> dict[str, Any]:
    """``{dotted.key: value}`` of a config, lists as text: the run parameters a tracker records."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix.rstrip(".")] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk(to_dict(cfg), "")
    return out


class Monitor:
    def __init__(self, run_dir: Path, accelerator, cfg=None):
        """``accelerator`` carries the trackers (built with ``log_with``); ``cfg`` is stored as run parameters."""
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.writer = None  # TensorBoard's SummaryWriter, for what only TensorBoard shows
        self._jsonl = None
        self._last: dict[str, dict[str, float]] = {}
        if self.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        # Collective-free; Accelerate starts the trackers on the main process only.
        accelerator.init_trackers(run_dir.parent.name)
        if self.is_main:
            names = [t.name for t in accelerator.trackers]
            if "tensorboard" in names:
                self.writer = accelerator.get_tracker("tensorboard", unwrap=True)
            if cfg is not None:
                params = flat_params(cfg)
                for tracker in accelerator.trackers:
                    # TensorBoard's version writes an extra hparams run; it gets the final hparams instead.
                    if tracker.name != "tensorboard":
                        tracker.store_init_configuration(params)
            logger.info("trackers: %s", ", ".join(names) or "none (metrics.jsonl only)")

    def scalars(self, step: int, values: dict[str, float], kind: str) -> None:
        """Log scalars under ``<kind>/<name>`` to the trackers and as one JSON line."""
        if not self.is_main:
            return
        tagged = {f"{kind}/{name}": float(value) for name, value in values.items() if value is not None}
        self.accelerator.log(tagged, step=step)
        self._last[kind] = {k.split("/", 1)[1]: v for k, v in tagged.items()}
        record = {"kind": kind, "step": step, "time": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")

    def last(self, kind: str, name: str) -> float | None:
        """The latest logged value of ``<kind>/<name>`` (main process), or None."""
        return self._last.get(kind, {}).get(name)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, image_hwc, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is not None:
            clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()
                                            if isinstance(v, (int, float)) and math.isfinite(v)}, run_name=".")

    def close(self) -> None:
        if self.is_main:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self._jsonl.close()
