"""Run monitoring: instrumentation log lines, metrics.jsonl and TensorBoard scalars.

Only the main process writes files; every instrumentation line (``[LR]``, ``[GRAD]``,
``[VAL]``, ``[SELFTEST]``) has a TensorBoard twin so the two views never disagree.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("ris_dist.train")


def setup_logging(is_main: bool, rank: int) -> None:
    fmt = f"%(asctime)s [rank{rank}] %(message)s"
    logging.basicConfig(level=logging.INFO if is_main else logging.WARNING, format=fmt, datefmt="%H:%M:%S",
                        force=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class Monitor:
    def __init__(self, run_dir: Path, is_main: bool):
        self.is_main = is_main
        self.writer = None
        self._jsonl = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))
            self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float], kind: str) -> None:
        """Log scalars under ``<kind>/<name>`` to TensorBoard and one JSON line."""
        if not self.is_main:
            return
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"{kind}/{name}", float(value), step)
        record = {"kind": kind, "step": step, "time": time.time(), **{k: _jsonable(v) for k, v in values.items()}}
        self._jsonl.write(json.dumps(record) + "\n")

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.is_main:
            self.writer.add_text(tag, text, step)

    def image(self, tag: str, image_hwc, step: int) -> None:
        if self.is_main:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.is_main:
            clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
            self.writer.add_hparams(clean, {f"hparam/{k}": float(v) for k, v in metrics.items()
                                            if isinstance(v, (int, float)) and math.isfinite(v)}, run_name=".")

    def close(self) -> None:
        if self.is_main:
            self.writer.flush()
            self.writer.close()
            self._jsonl.close()
