"""Batched near-field MUSIC localization (system_model.md, "Localization").

Public API: :func:`localize` (covariances → :class:`Estimates`), :func:`music_spectrum`,
:func:`estimate_order` (MDL / AIC source count), :class:`SearchConfig` (search knobs).
"""

from .estimates import Estimates
from .grid import SearchConfig
from .music import localize, music_spectrum
from .order import estimate_order, information_criterion

__all__ = ["Estimates", "SearchConfig", "estimate_order", "information_criterion", "localize", "music_spectrum"]
