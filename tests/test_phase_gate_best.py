"""The phase gate judges the best checkpoint's validation, not the last one (nor the first).

A run whose validations are first < best > last by construction: a warmup from a tiny learning rate
to a destructive one. Step 1 (LR 5e-3) improves the validation NMSE of phase 0's overfit set; from
step 2 on (LR >= 1e-2, head included) each Adam step wrecks the model. The gate's threshold sits
between the best and the first validation, so only the best passes it.
"""

import json
import re

import pytest

from trainrun import FAST, train

MAX_VAL_NMSE = 1.45
OVERRIDES = FAST + ["data.train_scenes=64", "max_steps=4", "val.at_start=true", "val.every_steps=1",
                    "optim.lr=0.05", "optim.head_lr_mult=1", "optim.warmup_steps=10", "optim.warmup_floor=0.002",
                    "gate.enforce=true", f"gate.max_val_nmse={MAX_VAL_NMSE}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("gate"), OVERRIDES, env={"OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_gate_judges_the_best_validation(run):
    vals = {step: {k: v for k, v in r.items() if k not in ("kind", "step", "time")}
            for step, r in run.records("val").items()}
    assert sorted(vals) == [0, 1, 2, 3, 4]
    best_step = min(vals, key=lambda s: vals[s]["nmse"])
    first, best, last = vals[0], vals[best_step], vals[4]
    # The construction this test relies on (a failure here means the run no longer has that shape).
    assert 0 < best_step < 4, {s: v["nmse"] for s, v in vals.items()}
    assert best["nmse"] <= MAX_VAL_NMSE < min(first["nmse"], last["nmse"]), {s: v["nmse"] for s, v in vals.items()}

    meta = json.loads((run.run_dir / "best" / "meta.json").read_text())
    assert meta["step"] == best_step and meta["metrics"] == best
    gate = json.loads((run.run_dir / "gate.json").read_text())
    assert gate["best_step"] == best_step
    assert gate["final_val"] == meta["metrics"] and gate["final_val"] != last
    assert gate["first_val"] == first
    criterion = {c["name"]: c for c in gate["criteria"]}["val_nmse"]
    assert criterion["value"] == best["nmse"] != last["nmse"]
    assert criterion["passed"] and gate["passed"]
    assert run.returncode == 0, run.log[-3000:]  # gate.enforce: a gate judged on the last val exits 3
    # The last [VAL] line is the step-4 validation, which the gate did not judge.
    last_line = re.findall(r"\[VAL\] step=(\d+) nmse=(\S+)", run.log)[-1]
    assert int(last_line[0]) == 4 and float(last_line[1]) == pytest.approx(last["nmse"], rel=1e-3)
    assert f"val_nmse={best['nmse']:.4g}(ok)" in run.log and "[GATE] PASS" in run.log
