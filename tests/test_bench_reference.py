"""The per-element numpy reference and the batched torch simulator agree (cross-validates the physics)."""

from __future__ import annotations

import numpy as np
import pytest

from ris_dist.bench.numpy_reference import draw_inputs, reference_simulate
from ris_dist.config import load_system
from ris_dist.physics import simulate


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name, overrides", [
    ("tiny", {}),
    ("tiny", {"codebook.kind": "random", "codebook.per_scene_selection": True, "codebook.quant_bits": 2,
              "ris_h": 5, "ris_v": 4, "num_snapshots": 6, "element_spacing_h_m": 0.12}),
    ("full", {}),
])
def test_reference_matches_simulate(name: str, overrides: dict) -> None:
    system = load_system(name, **overrides)
    indices = [0, 3, 17, 123456] if name == "tiny" else [0, 9]
    batch = simulate(system, indices, seed=21, split="test")
    ref = reference_simulate(system, indices, seed=21, split="test")
    for b, r in enumerate(ref):
        assert r.y.shape == tuple(batch.y.shape[1:])
        assert _rel(batch.y[b].numpy(), r.y) < 2e-5
        assert float(batch.noise_var[b]) == pytest.approx(r.noise_var, rel=2e-5)
        assert _rel(batch.R_true[b].numpy(), r.R_true) < 2e-5
        # R_samp goes through a regularized solve (condition ≲ 1/samp_delta_rel): looser, still float32-level.
        assert _rel(batch.R_samp[b].numpy(), r.R_samp) < 1e-4


def test_reference_detects_a_wrong_model() -> None:
    """Sanity of the comparison itself: a perturbed input must not pass the same tolerance."""
    system = load_system("tiny")
    batch = simulate(system, [5], seed=1, split="train")
    scene = draw_inputs(system, [5], seed=1, split="train")[0]
    scene.range_m = scene.range_m * 1.01
    from ris_dist.bench.numpy_reference import reference_scene

    assert _rel(batch.y[0].numpy(), reference_scene(system, scene).y) > 1e-3


def test_bench_cli_simulate_and_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ris_dist.bench.__main__ import main

    assert main(["no-such-bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bench 'no-such-bench' is not available" in err and "\n" not in err
    rc = main(["simulate", "--system", "tiny", "--batch-size", "8", "--num-scenes", "16", "--reference-scenes", "2"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["system"] == "tiny" and out["batched"]["scenes"] == 16 and out["numpy_reference"]["scenes"] == 2
    assert out["max_rel_error_vs_reference"]["R_samp"] < 1e-4
    assert {"speedup", "torch_threads", "config"} <= set(out)
