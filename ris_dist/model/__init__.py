"""The learned covariance model: config, presets and the network."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import MODEL_PRESETS, ModelConfig, model_config

__all__ = ["MODEL_PRESETS", "CovarianceNet", "ModelConfig", "ModelOutput", "build_model", "model_config"]

if TYPE_CHECKING:
    from .net import CovarianceNet, ModelOutput, build_model


def __getattr__(name: str) -> Any:
    # Lazy: the config (and so `--help`/`--print-config` of the trainer) must not import torch.
    if name in ("CovarianceNet", "ModelOutput", "build_model"):
        from . import net

        return getattr(net, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
