"""The operational sections of the training config: checkpoints, the process group, logging and
trackers, the profiler, and the drills tests use to inject faults.

Kept apart from :mod:`ris_dist.train.config` (what is trained and how) so that each module
stays one concern; ``ris_dist.train.config`` re-exports every class here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..config.schema import check


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 0
    """Save a resumable checkpoint every N optimizer steps; 0 = only at the end."""
    keep_last: int = 2
    """Resumable checkpoints kept on disk (the oldest beyond this are deleted)."""
    resume: bool = True
    """Resume from the latest valid checkpoint in the run folder if there is one."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps", self.every_steps, "must be >= 0")
        check(self.keep_last >= 1, "keep_last", self.keep_last, "must be >= 1")


@dataclass(frozen=True)
class DistConfig:
    """Process-group settings (every backend)."""

    timeout_s: float = 600.0
    """Seconds a collective may wait for the other ranks before it fails (NCCL, gloo and
    DeepSpeed's group). A rank that dies or stalls then ends every rank with an error
    instead of a hang; set it above the longest gap between two collectives (a validation
    with MUSIC, a checkpoint save)."""

    def __post_init__(self) -> None:
        check(math.isfinite(self.timeout_s) and self.timeout_s >= 10, "timeout_s", self.timeout_s,
              "must be a finite number of seconds >= 10")


@dataclass(frozen=True)
class InjectConfig:
    """Replace this rank's gradients with a non-finite value at the given optimizer steps."""

    ranks: list[int] = field(default_factory=list)
    """Ranks (process indices) whose gradients are replaced."""
    steps: list[int] = field(default_factory=list)
    """Optimizer steps (1-based) at which they are replaced."""
    value: Literal["inf", "nan"] = "inf"
    """The value written into every gradient entry."""


@dataclass(frozen=True)
class DebugConfig:
    """Drills for tests and incident rehearsal; all off by default."""

    inject_nonfinite_grad: InjectConfig = field(default_factory=InjectConfig)
    """Replace gradients with inf/NaN on chosen ranks and steps (tests the step gate)."""
    record_indices: bool = False
    """Each rank appends the global scene indices of every step to <run>/indices/rank<R>.jsonl."""
    preempt_at_step: int = 0
    """Rank 0 records SIGUSR1 at this step, as if SLURM had signalled it alone (0 = off)."""
    kill_during_save_step: int = 0
    """SIGKILL the main process inside the save at this step, after writing and before the rename."""
    fail_validation_on_rank: int = -1
    """This rank raises a MUSIC failure inside every validation (-1 = off): the no-hang drill."""

    def __post_init__(self) -> None:
        check(self.fail_validation_on_rank >= -1, "fail_validation_on_rank", self.fail_validation_on_rank,
              "must be a rank >= 0, or -1 (off)")
        check(self.preempt_at_step >= 0, "preempt_at_step", self.preempt_at_step, "must be >= 0")
        check(self.kill_during_save_step >= 0, "kill_during_save_step", self.kill_during_save_step, "must be >= 0")


TRACKER_EXTRAS: dict[str, str | None] = {"tensorboard": None, "wandb": "wandb", "mlflow": "mlflow"}
"""Tracker name -> the optional extra of ris_dist that installs its package (None: always installed)."""


@dataclass(frozen=True)
class LogConfig:
    """Instrumentation lines, progress reports and experiment trackers (docs/monitoring.md)."""

    every_steps: int = 10
    """Write the [LR]/[GRAD] lines and the train/loss scalars every N optimizer steps (and at step 1)."""
    progress_bar: bool = True
    """Report progress: a tqdm bar on a terminal; a [PROGRESS] log line every progress_interval_s when
    stdout or stderr is a file or a pipe, or under SLURM. false = neither."""
    progress_interval_s: float = 60.0
    """Seconds between [PROGRESS] lines when the output is not a terminal."""
    trackers: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers fed through Accelerate's tracker API. TensorBoard also gets the MUSIC spectrum
    images, the config text and the hparams; wandb and mlflow need their extra (pip install 'ris_dist[mlflow]')."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 1, "every_steps", self.every_steps, "must be >= 1")
        check(math.isfinite(self.progress_interval_s) and self.progress_interval_s > 0, "progress_interval_s",
              self.progress_interval_s, "must be > 0")
        check(len(set(self.trackers)) == len(self.trackers), "trackers", self.trackers, "lists a tracker twice")


@dataclass(frozen=True)
class ProfileConfig:
    """torch.profiler around a few optimizer steps; off by default (docs/monitoring.md)."""

    steps: tuple[int, int] | None = None
    """[first, last]: profile optimizer steps first..last (both included, first < last); null = off. The trace
    goes to <run>/<phase>/tb/profile (TensorBoard's profiler plugin), a top-ops table to the log."""
    table_rows: int = 15
    """Rows of the top-ops table (sorted by self time) logged after the last profiled step."""
    record_shapes: bool = False
    """Record the input shapes of every op (a larger trace)."""
    profile_memory: bool = False
    """Track tensor allocations (the profiler plugin's memory view)."""
    with_stack: bool = False
    """Record the Python stack of every op (a much larger trace)."""

    def __post_init__(self) -> None:
        if self.steps is not None:
            first, last = self.steps
            check(1 <= first < last, "steps", list(self.steps), "needs 1 <= first < last")
        check(self.table_rows >= 1, "table_rows", self.table_rows, "must be >= 1")
