"""Fixtures shared by the test modules under tests/ (tests/launch adds its own)."""

from __future__ import annotations

import pytest

from ris_dist.config import SystemConfig, load_system


@pytest.fixture(scope="session")
def system() -> SystemConfig:
    """The `tiny` system (frozen dataclass, so one instance serves every test)."""
    return load_system("tiny")
