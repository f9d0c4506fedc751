"""Multi-node: every backend's per-node command forms ONE job of nodes x procs ranks.

The commands come from the places users get them (submit.py's dry run, the shipped
slurm/phaseN.sh) and are read by accelerate's own launcher code: its argument parser and config
merge, then ``prepare_multi_gpu_env`` / ``prepare_deepspeed_cmd_env``, then torchrun's
``config_from_args``, which is what ``accelerate launch`` hands to ``torch.distributed.run``.
No process is started by the parsing tests; a last test starts two real "nodes" on this machine.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import _filter_args, prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from torch.distributed.run import config_from_args, get_args_parser

from ris_dist.launch import cli
from ris_dist.launch.command import PhaseRequest, resolve, train_command
from ris_dist.launch.profile import ClusterProfile

from launch_helpers import ROOT

GPU = ROOT / "configs" / "cluster" / "example_gpu.yaml"
MULTI_NODE_BACKENDS = ["ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"]
MAIN_IP = "10.11.12.13"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_config(argv: list[str]):
    """(torchrun LaunchConfig, program args) that ``accelerate launch argv`` runs on this node.

    Mirrors accelerate's ``launch_command``: validate/merge the config file, then the DeepSpeed or
    multi-GPU preparation; a DeepSpeed launcher other than ``standard`` returns a separate command
    (pdsh, ...) instead of a torchrun config, which fails here."""
    args = launch_command_parser().parse_args(argv[argv.index("accelerate.commands.launch") + 1:])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        cmd, _ = prepare_deepspeed_cmd_env(args)
        assert cmd is None, f"deepspeed_multinode_launcher={args.deepspeed_multinode_launcher} runs {cmd}"
    else:
        assert args.multi_gpu, "a multi-node backend must launch through torchrun"
        prepare_multi_gpu_env(args)
    torchrun_args = _filter_args(args, get_args_parser(), ["--training_script", args.training_script,
                                                           "--training_script_args", args.training_script_args])
    config, _program, program_args = config_from_args(torchrun_args)
    return config, program_args


def assert_one_job(commands: dict[int, list[str]], nodes: int, procs: int, endpoint: str) -> None:
    for node_rank, argv in commands.items():
        config, program_args = launch_config(argv)
        assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (nodes, nodes, procs)
        assert config.rdzv_backend == "static" and config.rdzv_configs["rank"] == node_rank
        assert config.rdzv_endpoint == endpoint  # every node meets at the same place
        assert program_args[program_args.index("-m") + 1] == "ris_dist.train"


def _dry_run_command(capsys, backend: str) -> list[str]:
    rc = cli.main(["--phase", "0", "--dry-run", "--profile", str(GPU), "--backend", backend])
    out = capsys.readouterr().out
    assert rc == 0
    line = re.search(r"^# (\S+ -m accelerate\.commands\.launch .*)$", out, re.M).group(1)
    return shlex.split(line)


@pytest.mark.parametrize("backend", MULTI_NODE_BACKENDS)
def test_dry_run_two_node_command_is_one_job(backend, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else torchrun's config_from_args sets it in os.environ
    argv = _dry_run_command(capsys, backend)
    assert argv[argv.index("--config_file") + 1] == f"configs/accelerate/{backend}.yaml"
    port = str(free_port())
    commands = {rank: [{"$NODE_RANK": str(rank), "$MAIN_IP": MAIN_IP, "$MAIN_PORT": port}.get(a, a) for a in argv]
                for rank in (0, 1)}
    assert_one_job(commands, nodes=2, procs=8, endpoint=f"{MAIN_IP}:{port}")  # WORLD_SIZE 16


@pytest.mark.parametrize("phase", [0, 1, 2, 3])
def test_shipped_slurm_script_command_is_one_job(phase, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = (ROOT / "slurm" / f"phase{phase}.sh").read_text()
    line = re.search(r'^  ("\$PYTHON" -m accelerate\.commands\.launch .*) "\$@" &$', text, re.M).group(1)
    port = str(free_port())
    values = {"$PYTHON": sys.executable, "@NODE_RANK@": None, "$MAIN_IP": MAIN_IP, "$MAIN_PORT": port}
    commands = {rank: [str(rank) if a == "@NODE_RANK@" else values.get(a) or a for a in shlex.split(line)]
                for rank in (0, 1)}
    assert_one_job(commands, nodes=2, procs=8, endpoint=f"{MAIN_IP}:{port}")


STUB = textwrap.dedent("""
    import json, os, sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    total = torch.tensor([1.0])
    dist.all_reduce(total)
    print("RANKINFO " + json.dumps({"rank": dist.get_rank(), "world": dist.get_world_size(),
                                    "env_world": os.environ["WORLD_SIZE"], "sum": total.item()}), flush=True)
    dist.destroy_process_group()
    os._exit(0)
""")


@pytest.mark.slow
def test_two_local_nodes_form_one_deepspeed_job(tmp_path):
    """Two node tasks of the shipped DeepSpeed backend, here as two processes on 127.0.0.1."""
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    profile = ClusterProfile(nodes=2, procs_per_node=1, backend="deepspeed_zero2")
    argv = train_command(0, profile, PhaseRequest([0], "x", []), sys.executable)
    argv = argv[:argv.index("ris_dist.train") - 1] + [str(stub)]
    port = str(free_port())
    procs = [subprocess.Popen(resolve(argv, {"NODE_RANK": str(r), "MAIN_IP": "127.0.0.1", "MAIN_PORT": port}),
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:  # a node that never meets its peer would wait for the rendezvous forever
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    infos = [json.loads(line.split(" ", 1)[1]) for out in outs for line in out.splitlines()
             if line.startswith("RANKINFO ")]
    assert sorted(i["rank"] for i in infos) == [0, 1]
    assert all(i["world"] == 2 and i["env_world"] == "2" and i["sum"] == 2.0 for i in infos), infos
