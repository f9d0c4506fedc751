"""``profile.steps=[first,last]``: torch.profiler around those optimizer steps.

Every rank records its own trace, ``<run>/<phase>/tb/profile/rank<R>.<ns>.pt.trace.json.gz``:
gzipped Chrome trace JSON, written by ``torch.profiler.tensorboard_trace_handler``, which
TensorBoard's profiler plugin and Perfetto open. Each profiled step is a
``ProfilerStep#<optimizer step>`` range, the name the plugin uses for its step view. After the
last profiled step the main process logs the top ops by self time as ``[PROFILE]`` lines.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from .run_config import ProfileConfig
from .trackers import TENSORBOARD_DIR

logger = logging.getLogger("ris_dist.train")

#: Sub-folder of the TensorBoard folder that holds the traces.
PROFILE_DIR = "profile"


def trace_dir(run_dir: Path) -> Path:
    return run_dir / TENSORBOARD_DIR / PROFILE_DIR


class StepProfiler:
    """Wrap each optimizer step in :meth:`step`; :meth:`close` ends a profile the run stopped inside."""

    def __init__(self, cfg: ProfileConfig, run_dir: Path, rank: int, is_main: bool, device_type: str):
        self.cfg, self.rank, self.is_main, self.device_type = cfg, rank, is_main, device_type
        self.out_dir = trace_dir(run_dir)
        self.prof = None
        self.profiled: list[int] = []

    def _start(self) -> None:
        import torch.profiler as tp

        activities = [tp.ProfilerActivity.CPU]
        if self.device_type == "cuda":
            activities.append(tp.ProfilerActivity.CUDA)
        # No schedule: record from start() to stop(), which hands the trace to the handler.
        self.prof = tp.profile(activities=activities,
                               on_trace_ready=tp.tensorboard_trace_handler(str(self.out_dir), f"rank{self.rank}",
                                                                           use_gzip=True),
                               record_shapes=self.cfg.record_shapes, profile_memory=self.cfg.profile_memory,
                               with_stack=self.cfg.with_stack)
        self.prof.start()

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Context of optimizer step ``step`` (1-based): profiled when it lies in ``profile.steps``."""
        steps = self.cfg.steps
        if steps is None or not steps[0] <= step <= steps[1]:
            yield
            return
        from torch.profiler import record_function

        if self.prof is None:
            self._start()
        with record_function(f"ProfilerStep#{step}"):
            yield
        self.profiled.append(step)
        if step == steps[1]:
            self._finish()

    def _finish(self) -> None:
        prof, self.prof = self.prof, None
        prof.stop()  # writes the trace
        if not self.is_main:
            return
        sort_by = "self_device_time_total" if self.device_type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort_by, row_limit=self.cfg.table_rows)
        logger.info("[PROFILE] steps %d..%d, trace in %s; top %d ops by %s:", self.profiled[0], self.profiled[-1],
                    self.out_dir, self.cfg.table_rows, sort_by)
        for line in table.splitlines():
            logger.info("[PROFILE] %s", line)

    def close(self) -> None:
        if self.prof is not None:
            self._finish()
