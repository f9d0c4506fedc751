"""amp.dtype is the one training precision: DeepSpeed's bf16/fp16 blocks, the launcher's
--mixed_precision, fp32 exports, and the fp16 GradScaler's state across a requeue.

Real ``accelerate launch`` with 2 CPU processes over gloo. DeepSpeed refuses fp16 on CPU, so
fp16 is exercised here through the GradScaler under DDP; DeepSpeed's fp16 loss scaler runs in
``python -m ris_dist.bench gpu`` on a GPU.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ris_dist.config import ConfigError
from ris_dist.distributed.precision import check_launch_precision, deepspeed_precision_blocks

from trainrun import ACCELERATE, FAST, REPO, train

STANDARD = FAST + ["mode=standard"]


def test_deepspeed_blocks_follow_amp_dtype():
    raw = {"fp16": {"enabled": "auto"}, "bf16": {"enabled": "auto"}}
    blocks = deepspeed_precision_blocks(raw, "z.json", "bf16", 2.0**16)
    assert blocks["bf16"]["enabled"] is True and blocks["fp16"]["enabled"] is False
    blocks = deepspeed_precision_blocks({}, "z.json", "fp16", 2.0**12)
    assert blocks["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 12, "hysteresis": 1}
    assert deepspeed_precision_blocks(raw, "z.json", "none", 1.0)["bf16"]["enabled"] is False


@pytest.mark.parametrize(("raw", "amp", "message"), [
    ({"bf16": {"enabled": False}}, "bf16",
     'z.json: bf16.enabled=false contradicts amp.dtype=bf16 (use "auto" and let amp.dtype decide)'),
    ({"fp16": {"enabled": True}}, "none",
     'z.json: fp16.enabled=true contradicts amp.dtype=none (use "auto" and let amp.dtype decide)'),
    ({"fp16": {"initial_scale_power": 8}}, "fp16",
     "z.json: fp16.initial_scale_power=8 contradicts amp.init_scale=65536 (2^16)"),
])
def test_deepspeed_blocks_refuse_a_contradicting_json(raw, amp, message):
    with pytest.raises(ConfigError) as err:
        deepspeed_precision_blocks(raw, "z.json", amp, 2.0**16)
    assert str(err.value) == message


def test_launcher_precision_must_agree():
    check_launch_precision("bf16", {"ACCELERATE_MIXED_PRECISION": "bf16"})
    check_launch_precision("fp16", {"ACCELERATE_MIXED_PRECISION": "no"})
    check_launch_precision("fp16", {})
    with pytest.raises(ConfigError, match=r"--mixed_precision fp16 \(ACCELERATE_MIXED_PRECISION\) contradicts "
                                          r"amp.dtype=none"):
        check_launch_precision("none", {"ACCELERATE_MIXED_PRECISION": "fp16"})


@pytest.mark.slow
def test_bf16_zero2_trains_in_bf16_and_exports_fp32_master_weights(tmp_path):
    run = train(tmp_path, STANDARD + ["max_steps=3", "amp.dtype=bf16"], backend="deepspeed_zero2")
    assert run.returncode == 0, run.log[-4000:]
    assert "[AMP] dtype=bf16 params=torch.bfloat16" in run.log  # the engine holds bf16 weights
    losses = run.records("loss")
    assert sorted(losses) == [1, 2, 3] and all(math.isfinite(r["total"]) for r in losses.values())
    assert all(r["stepped"] for r in run.records("train").values())
    digests = run.digests()
    assert len(digests) == 2 and digests[0] == digests[1]
    weights = torch.load(run.run_dir / "best" / "model.pt", weights_only=True)
    assert {v.dtype for v in weights.values()} == {torch.float32}
    # From the fp32 master copy, not a cast of the bf16 weights: some values need float32.
    assert any(bool((v != v.bfloat16().float()).any()) for v in weights.values())


def _launch(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def _errors(log: str) -> set[str]:
    return {line for line in log.splitlines() if line.startswith("error:")}


@pytest.mark.slow
def test_deepspeed_json_contradicting_amp_dtype_is_refused(tmp_path):
    bad = tmp_path / "zero2_fp16.json"
    shipped = json.loads((REPO / "configs/deepspeed/zero2.json").read_text())
    bad.write_text(json.dumps({**shipped, "fp16": {"enabled": True}}))
    proc = _launch([ACCELERATE, "launch", "--config_file", "configs/accelerate/deepspeed_zero2.yaml",
                    "--deepspeed_config_file", str(bad), "-m", "ris_dist.train", "--config", "configs/phase0.yaml",
                    f"output_dir={tmp_path}", *STANDARD, "max_steps=1"])
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "exitcode  : 2" in log, log[-3000:]
    assert _errors(log) == {f'error: {bad}: fp16.enabled=true contradicts amp.dtype=none '
                            f'(use "auto" and let amp.dtype decide)'}


@pytest.mark.slow
def test_launcher_mixed_precision_contradicting_amp_dtype_is_refused(tmp_path):
    want = ("error: accelerate launch --mixed_precision fp16 (ACCELERATE_MIXED_PRECISION) contradicts amp.dtype=none:"
            " set amp.dtype=fp16 or launch with --mixed_precision no")
    one = _launch([sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml",
                   f"output_dir={tmp_path}", *STANDARD], env={"ACCELERATE_MIXED_PRECISION": "fp16"})
    assert one.returncode == 2 and one.stderr.strip().splitlines()[-1] == want, one.stderr[-3000:]
    ddp = _launch([ACCELERATE, "launch", "--config_file", "configs/accelerate/cpu_ddp.yaml", "--mixed_precision",
                   "fp16", "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={tmp_path}",
                   *STANDARD])
    log = ddp.stdout + ddp.stderr
    assert ddp.returncode != 0 and "exitcode  : 2" in log and _errors(log) == {want}, log[-3000:]


@pytest.mark.slow
def test_fp16_ddp_resume_continues_at_the_saved_loss_scale(tmp_path):
    # Two injected overflows take the scale from 2^6 to 2^4 before the save at step 4; a scaler
    # that is not restored would start again at 2^6 after the requeue.
    overrides = STANDARD + ["amp.dtype=fp16", "amp.init_scale=64",
                            "debug.inject_nonfinite_grad={ranks: [1], steps: [2, 3], value: inf}"]
    first = train(tmp_path, overrides + ["max_steps=4"], backend="cpu_ddp")
    assert first.returncode == 0, first.log[-4000:]
    before = first.records("train")
    assert [s for s, r in sorted(before.items()) if not r["stepped"]] == [2, 3]
    assert before[4]["loss_scale"] == 16.0
    resumed = train(tmp_path, overrides + ["max_steps=6"], backend="cpu_ddp")
    assert resumed.returncode == 0, resumed.log[-4000:]
    assert "resumed from" in resumed.log
    after = resumed.records("train")
    assert after[5]["stepped"] and after[5]["loss_scale"] == 16.0
    assert resumed.digests()[0] == resumed.digests()[1]
