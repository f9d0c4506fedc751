"""Cluster profiles: typed and validated like every other config; one-line errors."""

from __future__ import annotations

import pytest

from ris_dist.config.schema import ConfigError
from ris_dist.launch.profile import ClusterProfile, load_profile

from launch_helpers import ROOT


def test_shipped_profiles_load():
    local = load_profile(ROOT / "configs" / "cluster" / "local.yaml")
    assert local.nodes == 1 and local.gpus_per_node == 0 and local.engine == "single" and local.procs == 1
    workstation = load_profile(ROOT / "configs" / "cluster" / "workstation.yaml")
    assert workstation.engine == "single" and workstation.cpus_per_task == 2 and workstation.env["OMP_NUM_THREADS"] == "2"
    gpu = load_profile(ROOT / "configs" / "cluster" / "example_gpu.yaml")
    assert gpu.nodes >= 2 and gpu.gpus_per_node == 8 and gpu.procs == 8 and gpu.backend.startswith("deepspeed")


def test_cli_values_override_profile():
    p = load_profile(ROOT / "configs" / "cluster" / "example_gpu.yaml", {"nodes": 4, "partition": "big", "qos": None})
    assert p.nodes == 4 and p.partition == "big" and p.qos == "normal"


@pytest.mark.parametrize("text, key", [
    ("nodez: 2\n", "nodez: unknown key"),
    ("nodes: two\n", "nodes: expected int"),
    ("nodes: 0\n", "nodes: must be in"),
    ("backend: horovod\n", "backend: must be one of"),
    ("exclusive: maybe\n", "exclusive: expected bool"),
    ("time_min: 1\nsignal_delay_s: 120\n", "signal_delay_s: must be shorter"),
    ("env: {1BAD: x}\n", "env.1BAD"),
    ("setup: ['ok', '']\n", "setup[1]"),
])
def test_bad_profile_gives_one_line_error(tmp_path, text, key):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    msg = str(err.value)
    assert "\n" not in msg and key in msg and str(path) in msg


def test_bad_cli_value_names_the_command_line():
    with pytest.raises(ConfigError, match=r"^command line: nodes: must be in"):
        load_profile(ROOT / "configs" / "cluster" / "local.yaml", {"nodes": -1})


def test_procs_per_node_defaults():
    assert ClusterProfile(backend="cpu_ddp").procs == 2
    assert ClusterProfile(backend="ddp", gpus_per_node=4).procs == 4
    assert ClusterProfile(backend="ddp", gpus_per_node=4, procs_per_node=2).procs == 2


def test_auto_backend():
    assert ClusterProfile().engine == "single"
    assert ClusterProfile(gpus_per_node=8).engine == "ddp"
    assert ClusterProfile(nodes=2).engine == "cpu_ddp"
    assert ClusterProfile(backend="deepspeed_zero3", gpus_per_node=8).engine == "deepspeed_zero3"
