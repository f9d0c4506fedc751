"""RIS near-field physics: steering, channel, codebooks, scenes, measurements, covariances.

Public API: :func:`steering`, :func:`simulate` (returns a :class:`SceneBatch`),
:func:`true_covariance`, :func:`sample_covariance`.
"""

from .codebook import codewords
from .simulate import (
    SceneBatch,
    back_projection,
    code_indices,
    codes_from_indices,
    sample_covariance,
    simulate,
    trace_normalize,
    true_covariance,
)
from .steering import direction_cosines, element_positions, path_difference, resolution_cells, steering

__all__ = [
    "SceneBatch",
    "back_projection",
    "code_indices",
    "codes_from_indices",
    "codewords",
    "direction_cosines",
    "element_positions",
    "path_difference",
    "resolution_cells",
    "sample_covariance",
    "simulate",
    "steering",
    "trace_normalize",
    "true_covariance",
]
