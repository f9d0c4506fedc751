"""Curriculum recipes: which phase configs a launch runs.

A recipe names a folder of ``phase0..3.yaml`` under ``configs/``. ``tiny`` is the CPU
curriculum at the top of ``configs/``; ``full`` is the 12x12-RIS curriculum for GPU clusters;
``full-lite`` runs the same physics with a small model on a CPU (docs/full_recipe.md).
"""

from __future__ import annotations

from ..config.schema import ConfigError

#: recipe name -> folder of its phase configs, relative to the repository root
RECIPES: dict[str, str] = {
    "tiny": "configs",
    "full": "configs/full",
    "full-lite": "configs/full-lite",
}
DEFAULT_RECIPE = "tiny"


def check_recipe(name: str) -> str:
    """``name`` itself, or a one-line ConfigError listing the known recipes."""
    if name not in RECIPES:
        raise ConfigError(f"recipe {name!r}: unknown (known: {', '.join(RECIPES)})")
    return name


def recipe_config(recipe: str, phase: int) -> str:
    """Path of ``phase``'s config in ``recipe``, relative to the repository root."""
    return f"{RECIPES[check_recipe(recipe)]}/phase{phase}.yaml"
