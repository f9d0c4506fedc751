"""Launcher test fixtures: a real one-node SLURM for the session, and a test cluster profile."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from launch_helpers import ROOT  # noqa: E402


@pytest.fixture()
def profile(tmp_path: Path) -> Path:
    """configs/cluster/local.yaml with submitit's logs under tmp_path."""
    text = (ROOT / "configs" / "cluster" / "local.yaml").read_text()
    text = re.sub(r"^log_dir:.*$", f"log_dir: {tmp_path / 'slurm'}", text, flags=re.M)
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def slurm_cluster():
    from slurm_cluster import SlurmCluster

    t0 = time.monotonic()
    cluster = SlurmCluster().start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    print(f"\n[slurm] test cluster up in {time.monotonic() - t0:.1f}s ({cluster.dir})", file=sys.stderr)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
