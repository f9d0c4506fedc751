"""The step gate: one decision from the global norm and found_inf, identical on every rank."""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ris_dist.distributed.gate import step_gate, total_grad_norm


@pytest.mark.parametrize("norm, reason", [(float("inf"), "nonfinite"), (float("nan"), "nonfinite"),
                                          (0.0, "zero"), (-0.0, "zero")])
def test_gate_skips_inf_nan_and_zero(norm, reason):
    d = step_gate(torch.tensor(norm), False, "cpu")
    assert not d.step and d.reason == reason


def test_gate_steps_on_finite_positive_norm():
    d = step_gate(torch.tensor(1e-12), False, "cpu")
    assert d.step and d.reason == "step" and d.grad_norm == pytest.approx(1e-12)


def test_gate_skips_on_found_inf_even_with_finite_norm():
    d = step_gate(torch.tensor(3.0), torch.tensor(1.0), "cpu")
    assert not d.step and d.found_inf and d.reason == "found_inf"


def test_total_grad_norm_is_global_l2_and_keeps_nonfinite():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(2))
    c = torch.nn.Parameter(torch.zeros(1))  # no grad: counts as zero
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0])
    assert float(total_grad_norm([a, b, c], "cpu")) == pytest.approx(5.0)
    b.grad = torch.tensor([float("nan"), 1.0])
    assert math.isnan(float(total_grad_norm([a, b], "cpu")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, norms: list[float], found: list[float], out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        d = step_gate(torch.tensor(norms[rank]), torch.tensor(found[rank]), "cpu")
        out.put((rank, d.step, d.reason, d.grad_norm))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("norms, found, want_step, want_reason", [
    ([1.0, float("inf")], [0.0, 0.0], False, "nonfinite"),  # inf on rank 1 only
    ([float("nan"), 2.0], [0.0, 0.0], False, "nonfinite"),  # nan on rank 0 only
    ([1.0, 1.0], [0.0, 1.0], False, "found_inf"),           # one rank's scaler overflowed
    ([1.0, 2.0], [0.0, 0.0], True, "step"),                 # agree on the max norm
])
def test_two_gloo_ranks_take_the_same_decision(norms, found, want_step, want_reason):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, norms, found, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [r[1] for r in results] == [want_step, want_step]
    assert [r[2] for r in results] == [want_reason, want_reason]
    if want_step:
        assert [r[3] for r in results] == [2.0, 2.0]
