"""Batched near-field MUSIC localization (system_model.md, "Localization").

Public API: :func:`localize` (covariances → :class:`Estimates`), :func:`music_spectrum`,
:func:`estimate_order` (MDL / AIC source count), :func:`choose_num_sources` (K̂ from the K head:
MAP or expected success, :class:`SuccessTable`), :class:`SearchConfig` (search knobs);
B4, stochastic ML on the per-snapshot model: :func:`ml_localize`, :func:`ml_refine`, :class:`MLConfig`;
K̂ and positions from start points by the same likelihood: :func:`music_candidates`, :func:`ml_refine_select`.
"""

from .decision import K_DECISIONS, KDecision, SuccessTable, choose_num_sources, fit_success_table
from .estimates import Estimates
from .grid import SearchConfig
from .ml import MLConfig, ml_localize, ml_refine
from .ml_select import ml_refine_select
from .music import localize, music_candidates, music_spectrum
from .order import estimate_order, information_criterion

__all__ = ["Estimates", "KDecision", "K_DECISIONS", "MLConfig", "SearchConfig", "SuccessTable", "choose_num_sources", "estimate_order",
           "fit_success_table", "information_criterion", "localize", "ml_localize", "ml_refine", "ml_refine_select",
           "music_candidates", "music_spectrum"]
