"""TensorBoard, end to end, against a real short training run.

(a) the event files hold every instrumentation tag, with the values of metrics.jsonl;
(b) a real ``tensorboard`` server serves the same tags and values over its HTTP API;
(c) headless Chromium renders the #scalars page with charts: its screenshot differs
    clearly from a blank page and from the same page over an empty logdir.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = "tb"  # TensorBoard names the run after the folder of its event files: <run_dir>/tb
TAGS = ("train/grad_norm", "train/lr_backbone", "train/lr_head", "train/skipped_total", "train/found_inf",
        "train/delta_param", "train/samples_per_s", "train/peak_mem_mb", "loss/w_nmse", "loss_raw/nmse",
        "weights/lam_cov", "weights/beta", "val/nmse")
CHROMIUM = Path("/usr/bin/chromium")
RUN_ORANGE = np.array([255, 112, 67])  # #ff7043, TensorBoard's colour for the first run
SERVER_DEADLINE_S = 60.0

pytestmark = pytest.mark.slow  # a real training run, a server and a browser


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    cmd = [sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={out}",
           "run_name=tb", "max_steps=8", "data.train_scenes=64", "data.val_scenes=64", "data.batch_size=32",
           "val.every_steps=4", "gate.enforce=false", "log.every_steps=1", "log.progress_bar=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "tb" / "phase0"


def jsonl_series(run_dir: Path, tag: str) -> dict[int, float]:
    """{step: value} of ``kind/name`` from metrics.jsonl (non-finite values are stored as strings)."""
    kind, name = tag.split("/", 1)
    out: dict[int, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["kind"] == kind and rec.get(name) is not None:
            assert rec["step"] not in out, f"{tag}: step {rec['step']} logged twice"
            out[rec["step"]] = float(rec[name])
    return out


def assert_same_series(got: dict[int, float], want: dict[int, float], what: str) -> None:
    assert want, f"{what}: nothing in metrics.jsonl"
    assert sorted(got) == sorted(want), f"{what}: steps {sorted(got)} != {sorted(want)}"
    for step, value in want.items():
        # TensorBoard stores float32; metrics.jsonl holds the float64 that was logged.
        assert math.isclose(got[step], value, rel_tol=1e-6, abs_tol=1e-30) or (
            math.isnan(got[step]) and math.isnan(value)), f"{what} step {step}: {got[step]} != {value}"


def test_event_files_hold_every_tag_with_jsonl_values(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    missing = sorted(set(TAGS) - set(acc.Tags()["scalars"]))
    assert not missing, f"tags missing from the event files: {missing}"
    for tag in TAGS:
        assert_same_series({e.step: e.value for e in acc.Scalars(tag)}, jsonl_series(run_dir, tag), tag)
    assert sorted(jsonl_series(run_dir, "val/nmse")) == [4, 8]
    assert sorted(jsonl_series(run_dir, "train/grad_norm")) == list(range(1, 9))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


@contextlib.contextmanager
def serve(logdir: Path, log_file: Path, wait_for_run: str | None) -> Iterator[str]:
    """A real TensorBoard server on a free port; yields its base URL; always terminated."""
    port = free_port()
    exe = Path(sys.executable).parent / "tensorboard"
    with open(log_file, "w") as log:
        proc = subprocess.Popen([str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_DEADLINE_S
        while True:
            assert proc.poll() is None, f"tensorboard exited with {proc.returncode}: {log_file.read_text()[-2000:]}"
            try:
                runs = get_json(f"{base}/data/runs")
            except (urllib.error.URLError, ConnectionError):
                runs = None  # not listening yet
            # The server answers before its first load of the logdir; wait for the run itself.
            if runs is not None and (wait_for_run is None or wait_for_run in runs):
                break
            assert time.monotonic() < deadline, (f"tensorboard did not serve {wait_for_run or 'anything'} within "
                                                 f"{SERVER_DEADLINE_S:.0f} s: {log_file.read_text()[-2000:]}")
            time.sleep(0.25)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory) -> Iterator[str]:
    with serve(run_dir, tmp_path_factory.mktemp("tblog") / "server.log", wait_for_run=RUN) as base:
        yield base


def test_server_api_serves_the_same_tags_and_values(server, run_dir):
    assert get_json(f"{server}/data/runs") == [RUN]
    tags = get_json(f"{server}/data/plugin/scalars/tags")
    missing = sorted(set(TAGS) - set(tags[RUN]))
    assert not missing, f"tags missing from /data/plugin/scalars/tags: {missing}"
    for tag in ("val/nmse", "train/grad_norm", "weights/beta"):
        query = urllib.parse.urlencode({"run": RUN, "tag": tag})
        rows = get_json(f"{server}/data/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
        assert_same_series({int(step): value for _, step, value in rows}, jsonl_series(run_dir, tag), tag)


@pytest.fixture(scope="module")
def chromium(missing_tool) -> Path:
    if not CHROMIUM.exists():
        missing_tool(f"{CHROMIUM} not found (apt-get install chromium; .ci/run installs it)")
    return CHROMIUM


def screenshot(chromium: Path, url: str, tmp: Path, name: str) -> np.ndarray:
    """RGB uint8 screenshot of ``url`` (1280×900) by headless Chromium."""
    png = tmp / f"{name}.png"
    cmd = [str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / f'profile-{name}'}", "--window-size=1280,900", "--virtual-time-budget=15000",
           f"--screenshot={png}", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.is_file(), f"chromium wrote no screenshot of {url} (exit {proc.returncode}): {proc.stderr[-1500:]}"
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    return np.round(img * 255).astype(np.int16) if img.dtype != np.uint8 else img.astype(np.int16)


def page_stats(img: np.ndarray) -> dict[str, int]:
    """Counts over the chart area (below the header bar, right of the sidebar)."""
    main = img[80:, 320:].reshape(-1, 3)
    colors, counts = np.unique(main, axis=0, return_counts=True)
    background = colors[counts.argmax()]
    return {"non_background": int((np.abs(main - background).sum(1) > 30).sum()),
            "run_orange": int((np.abs(main - RUN_ORANGE).sum(1) <= 40).sum()),
            "distinct_colors": len(colors)}


def test_chromium_renders_a_scalar_chart(chromium, run_dir, server, tmp_path):
    empty = tmp_path / "empty_logdir"
    empty.mkdir()
    blank = page_stats(screenshot(chromium, "about:blank", tmp_path, "blank"))
    with serve(empty, tmp_path / "empty_server.log", wait_for_run=None) as empty_base:
        no_runs = page_stats(screenshot(chromium, f"{empty_base}/#scalars", tmp_path, "empty"))
    data = page_stats(screenshot(chromium, f"{server}/#scalars", tmp_path, "data"))
    where = f"screenshots in {tmp_path}: blank {blank}, empty logdir {no_runs}, data {data}"
    # The empty-logdir page is TensorBoard's 'No scalar data was found' text: no run colour anywhere.
    assert no_runs["run_orange"] < 10 and blank["run_orange"] == 0, where
    # Charts draw their points and lines in the run's colour (lines cover far more than dots do).
    assert data["run_orange"] >= 60, where
    assert data["non_background"] > 1.5 * no_runs["non_background"], where
    assert data["distinct_colors"] > blank["distinct_colors"] + 100, where
