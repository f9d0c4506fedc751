"""The learned covariance model: config, presets and the network."""

from .config import MODEL_PRESETS, ModelConfig, model_config
from .net import CovarianceNet, ModelOutput, build_model

__all__ = ["MODEL_PRESETS", "CovarianceNet", "ModelConfig", "ModelOutput", "build_model", "model_config"]
