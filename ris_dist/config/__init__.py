"""Typed configs. ``load_system`` is the public entry point for the physical system."""

from .schema import ConfigError, apply_overrides, build, parse_overrides, read_yaml, to_dict
from .system import CodebookConfig, SuccessConfig, SystemConfig, config_dir, load_system, system_from_dict

__all__ = [
    "CodebookConfig",
    "ConfigError",
    "SuccessConfig",
    "SystemConfig",
    "apply_overrides",
    "build",
    "config_dir",
    "load_system",
    "parse_overrides",
    "read_yaml",
    "system_from_dict",
    "to_dict",
]
