"""``python -m ris_dist.evaluate --checkpoint``: the learned model next to B1, B2 and the CRB."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ris_dist.config import load_system
from ris_dist.model import build_model, model_config
from ris_dist.train.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
FILES = ("results.json", "report.md", "rmse_vs_snr.png", "rmse_vs_range.png", "success_vs_snr.png")
ALL_METHODS = ["b1", "b2", "model", "model_oracle_k"]


def make_checkpoint(path: Path, system: str = "tiny", k_head_answers: int | None = None, **meta_extra) -> Path:
    """A best/ folder like the trainer writes, from a freshly built (untrained) tiny model.

    ``k_head_answers=k`` sets the K head's last layer so that its argmax is k on every scene.
    """
    cfg = model_config("tiny")
    torch.manual_seed(0)
    model = build_model(load_system(system), cfg)
    if k_head_answers is not None:
        last = model.k_head[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.fill_(-10.0)
            last.bias[k_head_answers - 1] = 10.0
    save_weights(path, model.state_dict(), {"step": 0, "metrics": {}, "system": system, "system_overrides": {},
                                            "model": dataclasses.asdict(cfg), "beta": 0.5, "k_source": "head",
                                            **meta_extra})
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ris_dist.evaluate", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ris_dist.data import write_split

    root = tmp_path_factory.mktemp("eval")
    split = root / "test"
    write_split(load_system("tiny"), 0, "test", 32, split, shard_size=16, progress=False)
    return make_checkpoint(root / "run" / "phase2" / "best"), split, root


@pytest.mark.slow
def test_cli_with_checkpoint_writes_every_table_and_plot(setup):
    ckpt, split, root = setup
    out = root / "out"
    proc = run_cli("--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FILES:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        assert f"wrote {path}" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ALL_METHODS and res["num_scenes"] == 32
    assert res["crb"]["overall"]["crb_num_sources"] > 0 and len(res["crb"]["by_snr"]) == 5
    for name in ALL_METHODS:
        m = res["methods"][name]
        assert len(m["by_snr"]) == 5 and len(m["by_range"]) == 5
        assert sum(r["num_scenes"] for r in m["by_snr"]) == 32
        for key in ("ratio_az_deg", "ratio_el_deg", "ratio_range_m", "crb_az_deg", "K_acc", "success"):
            assert key in m["overall"] and all(key in r for r in m["by_snr"] + m["by_range"])
    # the oracle-K variant gets the count right by construction
    assert res["methods"]["model_oracle_k"]["overall"]["K_acc"] == 1.0
    assert res["methods"]["b2"]["overall"]["K_acc"] == 1.0
    report = (out / "report.md").read_text()
    for name in ALL_METHODS:
        assert f"## Method `{name}`" in report
    # one SNR and one range table per method, plus B3's success-at-the-CRB pair
    heads = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("|")]
    assert heads.count("SNR (dB)") == len(ALL_METHODS) + 1 and heads.count("range (m)") == len(ALL_METHODS) + 1
    # both model variants are paired with B1, on success and on K̂ = K, each with one row per SNR bin and one overall
    assert sum(line.startswith("| model |") for line in report.splitlines()) == 2 * 6
    assert sum(line.startswith("| model_oracle_k |") for line in report.splitlines()) == 2 * 6
    assert "RMSE/√CRB r" in report and "## B3: CRB" in report


def test_main_model_only_in_process(setup, capsys):
    from ris_dist.evaluate import main

    ckpt, split, root = setup
    out = root / "only"
    assert main(["--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(out), "--method", "model"]) == 0
    assert "wrote" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["model"]
    assert res["model"] == {"checkpoint": str(ckpt), "beta": 0.5, "k_source": "head",  # β from meta.json
                            "k_decision": "map"}
    assert "MUSIC searches R_eff with β = 0.5" in (out / "report.md").read_text()


def test_success_rule_checkpoint_also_reports_the_argmax(setup, tmp_path, capsys):
    """A checkpoint served with the expected-success rule gets ``model_map_k`` beside ``model``."""
    from ris_dist.evaluate import main
    from ris_dist.localize import SuccessTable

    _, split, _ = setup
    from ris_dist.data import load_split

    # The head's argmax is K = 2 on every scene; q_2 = 0 everywhere, so the rule answers K̂ = 1.
    table = SuccessTable((-10.0, 30.0), ((0.5, 0.0),), ((10, 10),))
    ckpt = make_checkpoint(tmp_path / "best", k_head_answers=2, k_decision="success",
                           k_success_table=table.to_json())
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["methods"]) == ["b1", "b2", "model", "model_map_k", "model_oracle_k"]
    assert res["model"]["k_decision"] == "success"
    served, argmax = res["methods"]["model"]["overall"], res["methods"]["model_map_k"]["overall"]
    k_true = torch.cat([b.num_sources for b in load_split(split).batches(32)])
    assert len(k_true) == res["num_scenes"] and 0 < int((k_true == 1).sum()) < len(k_true)
    assert served["K_acc"] == pytest.approx(float((k_true == 1).float().mean()))
    assert argmax["K_acc"] == pytest.approx(float((k_true == 2).float().mean()))
    assert served["K_over"] == 0.0 and argmax["K_under"] == 0.0
    assert "by the expected-success rule" in (out / "report.md").read_text()


def test_beta_override_sets_what_music_searches(setup, capsys):
    """--beta 1 makes the model's R_eff the sample covariance: MUSIC on R_samp with the true K."""
    from ris_dist.covariance import effective_covariance
    from ris_dist.data import load_split
    from ris_dist.evaluate import main
    from ris_dist.localize import localize
    from ris_dist.metrics import aggregate, per_scene

    ckpt, split, root = setup
    out = root / "beta1"
    assert main(["--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(out),
                 "--method", "model_oracle_k", "--beta", "1"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["beta"] == 1.0
    got = res["methods"]["model_oracle_k"]["overall"]
    data = load_split(split)
    system = data.system
    batch = next(iter(data.batches(32)))
    R = effective_covariance(batch.R_samp, batch.R_samp, 1.0)
    want = aggregate(per_scene(localize(R, system, num_sources=batch.num_sources), batch, system), system)
    assert got["success"] == pytest.approx(want["success"])
    for key in ("rmse_az_deg", "rmse_el_deg", "rmse_range_m"):
        assert got[key] == pytest.approx(want[key], rel=1e-3), key


def test_bad_beta_is_a_one_line_error(setup, capsys):
    ckpt, split, _ = setup
    _one_line_error(in_process(capsys, "--checkpoint", str(ckpt), "--test-set", str(split), "--beta", "1.5"),
                    "--beta 1.5")
    _one_line_error(in_process(capsys, "--test-set", str(split), "--beta", "0.5"), "needs --checkpoint")


def _one_line_error(proc: subprocess.CompletedProcess | tuple[int, str], *needles: str) -> str:
    """``proc``: a finished CLI subprocess, or (exit code, stderr) of an in-process ``main``."""
    code, stderr = (proc.returncode, proc.stderr) if isinstance(proc, subprocess.CompletedProcess) else proc
    assert code == 2, (code, stderr[-2000:])
    err = stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_corrupt_model_pt_exits_2_with_one_line(setup, tmp_path, capsys):
    _, split, _ = setup
    ckpt = make_checkpoint(tmp_path / "best")
    (ckpt / "model.pt").write_bytes(b"\x00garbage, not a torch file")
    _one_line_error(run_cli("--checkpoint", str(ckpt), "--test-set", str(split), "--out", str(tmp_path / "o")),
                    str(ckpt / "model.pt"))
    assert not (tmp_path / "o").exists()
    (ckpt / "model.pt").write_bytes(b"PK\x03\x04truncated zip")
    _one_line_error(in_process(capsys, "--checkpoint", str(ckpt), "--test-set", str(split)), "model.pt")


def in_process(capsys, *args: str) -> tuple[int, str]:
    from ris_dist.evaluate import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_missing_checkpoint_and_model_method_without_it(setup, tmp_path, capsys):
    _, split, _ = setup
    _one_line_error(in_process(capsys, "--checkpoint", str(tmp_path / "nope"), "--test-set", str(split)), "nope")
    _one_line_error(in_process(capsys, "--test-set", str(split), "--method", "model"), "needs --checkpoint")


def test_checkpoint_for_another_system_is_refused(setup, tmp_path, capsys):
    _, split, _ = setup
    # the same tiny network, trained (nominally) on a tiny system with fewer snapshots
    ckpt = make_checkpoint(tmp_path / "best", system_overrides={"num_snapshots": 8})
    _one_line_error(in_process(capsys, "--checkpoint", str(ckpt), "--test-set", str(split)), "differs from the system")
