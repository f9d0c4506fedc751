"""Fixtures shared by the test modules under tests/ (tests/launch adds its own)."""

from __future__ import annotations

import os
from typing import Callable, NoReturn

import pytest

from ris_dist.config import SystemConfig, load_system


@pytest.fixture(scope="session")
def system() -> SystemConfig:
    """The `tiny` system (frozen dataclass, so one instance serves every test)."""
    return load_system("tiny")


@pytest.fixture(scope="session")
def missing_tool() -> Callable[[str], NoReturn]:
    """``missing_tool(reason)``: skip the test, except in CI (``CI=true``), where the run must fail.

    .ci/run installs every tool the suite needs (browser, linters, SLURM, Docker); a missing one
    there is a broken CI image, not a reason to test less.
    """

    def missing(reason: str) -> NoReturn:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {reason}", pytrace=False)
        pytest.skip(reason)

    return missing
