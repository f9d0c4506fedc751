"""Every collective of the step runs on the backend's device, and the DeepSpeed norm is one collective.

NCCL reduces CUDA tensors only, and this machine has no GPU. So the backends are given a
*reported* device that differs from where the gradients live: ``meta``. A correct gate or
backend builds what it reduces on the reported device whatever the norm's origin; code
that reduces on the gradient's device, or reads a value on the host first (``.cpu()``,
``float``, ``bool``), reduces a CPU tensor and fails here, as it would under NCCL. A
wrapper around ``torch.distributed``'s collectives (a real 2-process gloo group, real DDP
and real DeepSpeed ZeRO-1/2/3 engines) records each tensor's device and stops at the first
meta tensor, which gloo cannot reduce.
"""

from __future__ import annotations

import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "reduce")


class _Stop(Exception):
    """Raised by the recorder at the first meta tensor: gloo cannot reduce it."""


class _Recorder:
    """Wraps torch.distributed's collectives; records (name, device) of every call."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self._orig = {name: getattr(dist, name) for name in COLLECTIVES}

    def __enter__(self):
        for name, fn in self._orig.items():
            setattr(dist, name, self._wrap(name, fn))
        return self

    def __exit__(self, *exc):
        for name, fn in self._orig.items():
            setattr(dist, name, fn)

    def _wrap(self, name, fn):
        def wrapper(tensor, *args, **kwargs):
            self.calls.append((name, tensor.device.type))
            if tensor.device.type == "meta":
                raise _Stop
            return fn(tensor, *args, **kwargs)

        return wrapper


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def _loss(model, rank: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(100 + rank)  # ranks see different data: the norm must be global
    x = torch.randn(4, 6, generator=gen)
    return (model(x) ** 2).mean()


def _reported(device: str):
    return SimpleNamespace(device=torch.device(device))


def _on_meta(fn) -> list[tuple[str, str]]:
    with _Recorder() as rec:
        try:
            fn()
        except _Stop:
            pass
    return rec.calls


def _gate_cases(rank: int) -> dict:
    from ris_dist.distributed.gate import step_gate, total_grad_norm

    out = {"gate": _on_meta(lambda: step_gate(torch.tensor(2.0 + rank), torch.tensor(0.0), "meta", 0))}
    out["no_grad_norm_device"] = total_grad_norm([torch.nn.Parameter(torch.zeros(2))], "meta").device.type
    return out


def _ddp_case(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    from ris_dist.distributed.backend import TorchBackend
    from ris_dist.distributed.gate import step_gate

    model = DistributedDataParallel(_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _loss(model, rank).backward()
    backend = TorchBackend(_reported("meta"), model, opt, "none", 1.0)
    result = {}

    def run():
        norm, found = backend.grad_norm_and_found_inf()
        result["devices"] = (norm.device.type, found.device.type)
        step_gate(norm, found, backend.device, 0)

    result["calls"] = _on_meta(run)
    return result


def _zero_case(rank: int, stage: int) -> dict:
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from ris_dist.distributed.backend import DeepSpeedBackend

    model = _model()
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                      config=config)
    engine.set_gradient_accumulation_boundary(True)
    engine.backward(_loss(engine, rank))
    result = {"meta_calls": _on_meta(lambda: DeepSpeedBackend(_reported("meta"), engine).grad_norm_and_found_inf())}
    with _Recorder() as rec:
        norm, found = DeepSpeedBackend(_reported("cpu"), engine).grad_norm_and_found_inf()
    result["cpu_calls"] = rec.calls
    result["norm"] = float(norm)
    result["found"] = float(found)
    # The reference: every parameter's full gradient (collectives; every rank, same order).
    squares = sum(float(safe_get_full_grad(p).double().square().sum()) for p in engine.module.parameters())
    result["reference"] = math.sqrt(squares)
    engine.destroy()
    return result


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {"gate": _gate_cases(rank), "ddp": _ddp_case(rank)}
        for stage in (1, 2, 3):
            out[f"zero{stage}"] = _zero_case(rank, stage)
        queue.put((rank, out))
    except BaseException as err:  # the parent reports it; a silent child would only time out
        queue.put((rank, {"error": f"{type(err).__name__}: {err}"}))
        raise
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def results() -> dict[int, dict]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict(queue.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(timeout=120)
    for rank, res in out.items():
        assert "error" not in res, f"rank {rank}: {res['error']}"
    assert all(p.exitcode == 0 for p in procs)
    return out


@pytest.mark.slow
def test_gate_reduces_on_the_reported_device_whatever_the_norm_origin(results):
    for res in results.values():
        assert res["gate"]["gate"] == [("all_reduce", "meta")]  # one collective, on the backend's device
        assert res["gate"]["no_grad_norm_device"] == "meta"  # DDP's 'no gradient' zero too


@pytest.mark.slow
def test_ddp_norm_found_inf_and_gate_live_on_the_reported_device(results):
    for res in results.values():
        assert res["ddp"]["devices"] == ("meta", "meta")
        assert res["ddp"]["calls"] == [("all_reduce", "meta")]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_norm_is_one_collective_on_the_reported_device(results, stage):
    for res in results.values():
        zero = res[f"zero{stage}"]
        assert zero["meta_calls"] == [("all_reduce", "meta")]
        assert zero["cpu_calls"] == [("all_reduce", "cpu")]  # ONE collective, not one per parameter


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_partition_norm_is_the_global_norm(results, stage):
    norms = [results[r][f"zero{stage}"]["norm"] for r in (0, 1)]
    reference = results[0][f"zero{stage}"]["reference"]
    assert norms[0] == norms[1]
    assert norms[0] == pytest.approx(reference, rel=1e-6)
    assert reference > 0
    assert results[0][f"zero{stage}"]["found"] == 0.0
