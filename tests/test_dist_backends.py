"""A non-finite gradient on rank 1 only: every backend skips the same steps on both ranks.

Real ``accelerate launch`` with 2 CPU processes over gloo: DDP and DeepSpeed ZeRO-1/2/3. The value
is injected after the gradients were reduced (DDP: after the all-reduce; DeepSpeed: into rank 1's
own reduced gradient partition), so only rank 1 holds it and only a shared decision stops rank 0.
"""

import math

import pytest

from trainrun import FAST, train


@pytest.mark.slow
@pytest.mark.parametrize("backend,value", [("cpu_ddp", "inf"), ("deepspeed_zero1", "inf"),
                                           ("deepspeed_zero2", "nan"), ("deepspeed_zero3", "inf")])
def test_nonfinite_on_one_rank_skips_everywhere(tmp_path, backend, value):
    inject = f"debug.inject_nonfinite_grad={{ranks: [1], steps: [3, 5], value: {value}}}"
    run = train(tmp_path, FAST + ["max_steps=6", inject], backend=backend)
    assert run.returncode == 0, run.log[-4000:]
    skips = run.skips()
    assert sorted(skips) == [0, 1]
    assert skips[0] == skips[1] == [(3, "nonfinite"), (5, "nonfinite")]
    digests = run.digests()
    assert len(digests) == 2 and digests[0] == digests[1]
    train_log = run.records("train")
    assert [s for s, r in sorted(train_log.items()) if not r["stepped"]] == [3, 5]
    assert all(not math.isfinite(float(train_log[s]["grad_norm"])) for s in (3, 5))  # JSON: "inf"/"nan"
    assert train_log[6]["real_steps"] == 4  # training went on after the skips
    assert math.isfinite(run.records("val")[6]["nmse"])  # and the weights stayed finite


@pytest.mark.slow
def test_fp16_found_inf_is_global_under_ddp(tmp_path):
    run = train(tmp_path, FAST + ["mode=standard", "amp.dtype=fp16", "max_steps=6",
                                  "debug.inject_nonfinite_grad={ranks: [1], steps: [5], value: inf}"],
                backend="cpu_ddp")
    assert run.returncode == 0, run.log[-4000:]
    skips = run.skips()
    # GradScaler also overflows on its own while it calibrates the initial scale: whatever the
    # reason, both ranks must skip exactly the same steps, and the injected step is one of them.
    assert skips[0] == skips[1]
    assert (5, "found_inf") in skips[0] and all(reason == "found_inf" for _, reason in skips[0])
    import re

    scales = {}
    for rank, step, scale in re.findall(r"\[SKIP\] rank=(\d+) step=(\d+) reason=found_inf skipped=\d+ scale=([\d.e+]+)",
                                        run.log):
        scales.setdefault(int(step), {})[int(rank)] = float(scale)
    for n, step in enumerate(sorted(scales), start=1):
        assert scales[step][0] == scales[step][1] == 2.0**16 / 2**n  # backed off together, once per skip
    assert run.digests()[0] == run.digests()[1]
    assert run.records("train")[6]["loss_scale"] == 2.0**16 / 2 ** len(skips[0])
