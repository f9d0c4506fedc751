"""ris_dist: distributed training of learned covariances for RIS near-field localization."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Localizer", "__version__"]

if TYPE_CHECKING:
    from .inference import Localizer


def __getattr__(name: str) -> Any:
    # Lazy: `import ris_dist` must stay light (no torch) for configs, CLIs and tooling.
    if name == "Localizer":
        from .inference import Localizer

        return Localizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
