"""``log.trackers``: scalars through Accelerate's tracker API, read back from a real MLflow store.

MLflow runs on its local file store (no server). Since MLflow 3 that store needs
``MLFLOW_ALLOW_FILE_STORE=true``; its sqlite store would need SQLAlchemy, which mlflow-skinny
(the ``mlflow`` extra) does not install.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST = ["max_steps=4", "data.train_scenes=128", "data.val_scenes=32", "data.batch_size=32", "data.val_batch_size=32",
        "val.every_steps=2", "gate.enforce=false", "log.every_steps=1", "log.progress_bar=false",
        "checkpoint.every_steps=0"]


def jsonl(run_dir: Path, kind: str, name: str) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == kind and rec.get(name) is not None:
            out[rec["step"]] = float(rec[name])
    return out


def test_mlflow_file_store_holds_the_run_metrics_and_params(tmp_path, monkeypatch):
    try:
        from mlflow.tracking import MlflowClient
    except ModuleNotFoundError:
        raise AssertionError("mlflow is not installed: pip install -e '.[mlflow]' (the dev extra includes it)")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the client below and the run
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={tmp_path}",
           "run_name=trk", "log.trackers=[tensorboard, mlflow]", "optim.lr=7e-4", *FAST]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trackers: tensorboard, mlflow" in proc.stderr
    run_dir = tmp_path / "trk" / "phase0"

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trk")  # experiment = run_name, run = phase
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs] == ["phase0"]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.0007" and run.data.params["phase"] == "phase0"
    for kind, name in (("train", "grad_norm"), ("loss", "total"), ("val", "nmse"), ("selftest", "nmse_RR")):
        want = jsonl(run_dir, kind, name)
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"{kind}/{name}")}
        assert want and sorted(got) == sorted(want), f"{kind}/{name}: {sorted(got)} != {sorted(want)}"
        assert all(math.isclose(got[s], v, rel_tol=1e-9, abs_tol=1e-12) for s, v in want.items()), kind + name
    assert sorted(jsonl(run_dir, "train", "grad_norm")) == [1, 2, 3, 4]
    # TensorBoard still gets its event files (and its extras) next to the other tracker.
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))


def test_a_tracker_without_its_package_is_a_one_line_error_naming_the_extra(tmp_path):
    # None in sys.modules makes `import wandb` fail as if it were not installed, whatever is installed.
    code = ("import sys; sys.modules['wandb'] = None\n"
            "from ris_dist.train.__main__ import main\n"
            f"code = main(['--config', 'configs/phase0.yaml', 'output_dir={tmp_path}', 'log.trackers=[wandb]'])\n"
            "print('exit', code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["exit", "2", "False"], proc.stdout + proc.stderr[-2000:]  # before training
    assert proc.stderr.strip().splitlines() == [
        "error: log.trackers: wandb is not installed; install it with pip install 'ris_dist[wandb]' "
        "(or pip install wandb)"]
    assert not (tmp_path / "default").exists()


def test_mlflow_without_a_tracking_uri_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = ("import sys\n"
            "from ris_dist.train.__main__ import main\n"
            f"code = main(['--config', 'configs/phase0.yaml', 'output_dir={tmp_path}', 'log.trackers=[mlflow]'])\n"
            "print('exit', code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.stdout.split() == ["exit", "2", "False"], proc.stdout + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: log.trackers: mlflow needs MLFLOW_TRACKING_URI"), lines
    assert not (tmp_path / "default").exists()
