"""Experiment trackers (``log.trackers``) through Accelerate's tracker API.

Each tracker is one of Accelerate's own classes, built with this run's names and folders and
handed to the ``Accelerator`` as ``log_with``; :class:`~ris_dist.train.monitor.Monitor` then
logs through ``accelerator.log``. A tracker whose package is missing is a one-line
:class:`ConfigError` naming the extra to install, raised before training starts.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

from ..config import ConfigError
from .run_config import TRACKER_EXTRAS

if TYPE_CHECKING:
    from accelerate.tracking import GeneralTracker

    from .config import TrainConfig

#: Sub-folder of the run folder that holds the TensorBoard event files (``runs/<run>/<phase>/tb``).
TENSORBOARD_DIR = "tb"


def require_tracker_packages(trackers: list[str]) -> None:
    """Import each tracker's package; a missing one is a ConfigError naming the extra that installs it."""
    for name in trackers:
        extra = TRACKER_EXTRAS[name]
        if extra is None:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise  # the package is there but broken: its own error says more
            raise ConfigError(f"log.trackers: {name} is not installed; install it with "
                              f"pip install 'ris_dist[{extra}]' (or pip install {extra})") from None
        if name == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
            # MLflow's own default (a SQLite file in the working directory) needs SQLAlchemy,
            # which mlflow-skinny lacks, and fails deep inside the first log call.
            raise ConfigError("log.trackers: mlflow needs MLFLOW_TRACKING_URI (a tracking server URL, or "
                              "file:/path/to/mlruns with MLFLOW_ALLOW_FILE_STORE=true)")


def build_trackers(cfg: TrainConfig) -> list[GeneralTracker]:
    """Accelerate tracker objects for ``cfg.log.trackers``, named after the run and phase.

    TensorBoard writes to ``<run_dir>/tb``; MLflow logs to the experiment ``run_name`` with the
    phase as the run name, at ``MLFLOW_TRACKING_URI``; W&B to the project ``run_name``, with
    its files in the run folder.
    """
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    require_tracker_packages(cfg.log.trackers)
    tags = {"run_name": cfg.run_name, "phase": cfg.phase}
    out: list[GeneralTracker] = []
    for name in cfg.log.trackers:
        if name == "tensorboard":
            out.append(TensorBoardTracker(TENSORBOARD_DIR, str(cfg.run_dir)))
        elif name == "mlflow":
            out.append(MLflowTracker(experiment_name=cfg.run_name, run_name=cfg.phase, tags=tags))
        elif name == "wandb":
            out.append(WandBTracker(cfg.run_name, name=cfg.phase, dir=str(cfg.run_dir), tags=list(tags.values())))
        else:  # the config's Literal lists exactly the names above
            raise ConfigError(f"log.trackers: unknown tracker {name!r}")
    return out
