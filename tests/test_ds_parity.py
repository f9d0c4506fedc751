"""DDP and DeepSpeed ZeRO-1/2/3 take the same steps: same norm, same clipping, same accumulation.

Real ``accelerate launch`` runs on 2 CPU processes over gloo, fp32, 20 optimizer steps with
``optim.grad_clip`` small enough to bind on every step. Each backend runs twice over the
same scenes: ``batch_size=32, grad_accum_steps=1`` and ``batch_size=8, grad_accum_steps=4``.
144 scenes per epoch make every fifth step a short one (16 scenes: two micro-batches under
accumulation), which must weigh only the scenes it had. Compared: the gate's grad norm at
every step, and the final parameters (``best/model.pt``, the one validation at the end).
"""

from __future__ import annotations

import pytest
import torch

from trainrun import FAST, train

STEPS = 20
CLIP = 0.5  # the norms of these steps are ~1.4-11
# Adam's eps at 1e-5, far below these gradients' entries (~1e-3): the key part of each qkv bias has an
# exactly zero gradient in exact arithmetic (softmax ignores it), so its fp32 rounding noise, which the
# reduction order decides, would otherwise get full ±lr Adam updates (1.7e-5 apart after 20 steps).
BASE = [*FAST, "data.train_scenes=144", "epochs=4", f"max_steps={STEPS}", "val.every_steps=1000",
        f"optim.grad_clip={CLIP}", "optim.eps=1e-5"]
ACCUM = {1: ["data.batch_size=32", "optim.grad_accum_steps=1"], 4: ["data.batch_size=8", "optim.grad_accum_steps=4"]}
BACKENDS = ["cpu_ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"]
TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    cache: dict = {}

    def get(backend: str, accum: int):
        if (backend, accum) not in cache:
            run = train(tmp_path_factory.mktemp(f"{backend}-{accum}"), BASE + ACCUM[accum], backend=backend,
                        timeout=900)
            assert run.returncode == 0, run.log[-4000:]
            norms = {step: r["grad_norm"] for step, r in run.records("train").items()}
            assert sorted(norms) == list(range(1, STEPS + 1))
            assert all(r["stepped"] for r in run.records("train").values())
            weights = torch.load(run.run_dir / "best" / "model.pt", map_location="cpu", weights_only=True)
            cache[backend, accum] = (norms, weights)
        return cache[backend, accum]

    return get


def _max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _assert_norms_match(got: dict[int, float], want: dict[int, float]) -> None:
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=TOL), step


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[1:])
def test_zero_stages_match_ddp_with_clipping(runs, backend):
    ddp_norms, ddp_weights = runs("cpu_ddp", 1)
    norms, weights = runs(backend, 1)
    assert min(ddp_norms.values()) > CLIP  # clipping binds on every step
    _assert_norms_match(norms, ddp_norms)  # the partition norm is the global norm
    assert _max_param_diff(weights, ddp_weights) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulating_four_micro_batches_is_one_big_batch(runs, backend):
    norms_1, weights_1 = runs(backend, 1)
    norms_4, weights_4 = runs(backend, 4)
    _assert_norms_match(norms_4, norms_1)  # includes the short steps 5, 10, 15, 20
    assert _max_param_diff(weights_4, weights_1) < TOL
