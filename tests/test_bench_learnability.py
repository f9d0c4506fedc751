"""The learnability benchmark trains both variants on the same scenes and reports per-K NMSE."""

import json
import subprocess
import sys

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.model import build_model, model_config
from ris_dist.physics import simulate


def test_forward_features_sees_a_substituted_feature():
    """The diagnostic's substitution reaches the network: forward == forward_features on the real
    features, and a different R_samp row gives a different R_pred."""
    system = load_system("tiny")
    torch.manual_seed(0)
    model = build_model(system, model_config("tiny")).eval()
    b = simulate(system, torch.arange(4), seed=0, split="train")
    with torch.no_grad():
        f = model.features(b.y, b.H, b.codes, b.snr_db)
        direct = model(b.y, b.H, b.codes, b.snr_db).R_pred
        torch.testing.assert_close(model.forward_features(f, b.snr_db).R_pred, direct)
        swapped = model.forward_features({**f, "R_samp": b.R_true}, b.snr_db).R_pred
    assert (swapped - direct).abs().max() > 1e-3


@pytest.mark.slow
def test_learnability_bench_reports_both_variants():
    proc = subprocess.run([sys.executable, "-m", "ris_dist.bench", "learnability", "--system", "tiny",
                           "--preset", "tiny", "--num-scenes", "64", "--steps", "40", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out["features"]["nmse_per_k"]) == {"1", "2"}  # tiny: K <= 2, JSON keys
    for v in ("features", "oracle"):
        assert 0.0 < out[v]["nmse"] < 2.0
    assert out["features_over_oracle"] == pytest.approx(out["features"]["nmse"] / out["oracle"]["nmse"])
    # Given R_true in its input the network fits faster than from R_samp.
    assert out["oracle"]["nmse"] < out["features"]["nmse"]


@pytest.mark.parametrize("variants", ["features,nonsense", ","])
def test_learnability_bench_refuses_unknown_variants_in_one_line(variants):
    proc = subprocess.run([sys.executable, "-m", "ris_dist.bench", "learnability", "--variants", variants],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "--variants" in last and "choose from features, oracle" in last, last
