"""Training progress: a tqdm bar on a terminal, a concise ``[PROGRESS]`` log line in files.

tqdm redraws its bar with carriage returns several times a second. In a terminal that is one
line; in a SLURM log or a redirected file every frame stays, and the informative lines drown
in them. So the bar is used only when stdout and stderr are both terminals and the job is
not a SLURM job; otherwise one line goes through ``logging`` every ``log.progress_interval_s``
seconds (and once at the end): step/total, steps/s, ETA and the last logged loss.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

logger = logging.getLogger("ris_dist.train")


def interactive_output() -> bool:
    """True when a progress bar can redraw in place: both streams are terminals, and not under SLURM."""
    if os.environ.get("SLURM_JOB_ID"):
        return False
    return sys.stdout.isatty() and sys.stderr.isatty()


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Reports optimizer steps ``initial..total``; ``update(step)`` after each step, ``close()`` at the end."""

    def __init__(self, total: int, initial: int, *, enabled: bool, interval_s: float, desc: str,
                 last_loss: Callable[[], float | None] = lambda: None, interactive: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.initial, self.step = total, initial, initial
        self.enabled, self.interval_s, self.desc = enabled, interval_s, desc
        self.last_loss, self.clock = last_loss, clock
        self.bar = None
        self.t0 = self.last_report = clock()
        self.use_bar = enabled and (interactive_output() if interactive is None else interactive)
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def update(self, step: int) -> None:
        """Optimizer step ``step`` is done."""
        done, self.step = step - self.step, step
        if self.bar is not None:
            self.bar.update(done)
        elif self.enabled and self.clock() - self.last_report >= self.interval_s:
            self._report("")

    def status_line(self, note: str = "") -> str:
        elapsed = self.clock() - self.t0
        rate = (self.step - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.step) / rate) if rate > 0 else "?"
        loss = self.last_loss()
        pct = 100.0 * self.step / self.total if self.total else 100.0
        text = (f"[PROGRESS] {self.desc} step={self.step}/{self.total} ({pct:.0f}%) {rate:.3g} steps/s "
                f"elapsed={_clock(elapsed)} eta={eta}")
        if loss is not None:
            text += f" loss={loss:.4g}"
        return text + (f" {note}" if note else "")

    def _report(self, note: str) -> None:
        self.last_report = self.clock()
        logger.info(self.status_line(note))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.step > self.initial:
            self._report("end")
