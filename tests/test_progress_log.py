"""Progress in log files: ``[PROGRESS]`` lines through logging, never tqdm's carriage-return frames.

A tqdm bar redraws with ``\\r`` several times a second; with stdout redirected every frame
stays (phases 0-2 of the tiny curriculum once wrote a 690 KB log of ~9,500 frames). The bar is
kept for terminals only, checked here through a real pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"\[PROGRESS\] phase0 step=(\d+)/(\d+) \(\d+%\) [\d.e+-]+ steps/s elapsed=\S+ eta=\S+")
#: Bytes one [PROGRESS] line may take (timestamp, rank, step, rate, times, loss, note): ~110 in practice.
PROGRESS_LINE_MAX_B = 160

#: Drives Progress directly, as the trainer does: 5 steps, a line every 0 s when not on a terminal.
SCRIPT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s")
from ris_dist.train.progress import Progress
p = Progress(5, 0, enabled=True, interval_s=1e-9, desc="phase0", last_loss=lambda: 0.5)
for step in range(1, 6):
    time.sleep(0.01)
    p.update(step)
p.close()
"""


def run_on_terminal(env: dict[str, str]) -> str:
    """Run SCRIPT with stdout and stderr on a real pseudo-terminal; return what it wrote there."""
    master, slave = os.openpty()
    # A new pty is 0x0; tqdm sizes its bar to the terminal.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=REPO, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode(errors="replace")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    return {**env, **extra}


def test_terminal_gets_a_bar_files_and_slurm_get_lines():
    tty = run_on_terminal(clean_env())
    assert "\r" in tty.replace("\r\n", "\n") and "5/5" in tty, tty[-500:]  # tqdm redraws in place
    assert "[PROGRESS]" not in tty
    # Under SLURM a terminal is still a log file in the end (srun --pty aside): lines, no bar.
    slurm = run_on_terminal(clean_env(SLURM_JOB_ID="123"))
    assert "\r" not in slurm.replace("\r\n", "\n"), slurm[-500:]  # the pty turns \n into \r\n
    assert len(PROGRESS.findall(slurm)) == 6  # one per step (interval ~0 s) and the closing one
    piped = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
                           env=clean_env())
    assert "\r" not in piped.stdout + piped.stderr
    assert [int(s) for s, _ in PROGRESS.findall(piped.stderr)] == [1, 2, 3, 4, 5, 5]
    assert piped.stderr.splitlines()[-1].endswith("loss=0.5 end")


def test_training_log_file_has_status_lines_and_no_bar_frames(tmp_path):
    """A real short phase with stdout and stderr in one file.

    Bound: the file is at most its informative lines (everything but [PROGRESS]) plus
    PROGRESS_LINE_MAX_B bytes for each of at most wall_s / interval_s + 2 status lines.
    """
    interval_s = 1.0
    log = tmp_path / "train.log"
    cmd = [sys.executable, "-m", "ris_dist.train", "--config", "configs/phase0.yaml", f"output_dir={tmp_path}",
           "run_name=p", "max_steps=6", "data.train_scenes=192", "data.val_scenes=32", "data.batch_size=32",
           "data.val_batch_size=32", "gate.enforce=false", "log.every_steps=3", "log.progress_bar=true",
           f"log.progress_interval_s={interval_s}", "checkpoint.every_steps=0"]
    start = time.monotonic()
    with open(log, "wb") as fh:
        proc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=600, env=clean_env())
    wall_s = time.monotonic() - start
    data = log.read_bytes()
    text = data.decode()
    assert proc.returncode == 0, text[-3000:]
    assert b"\r" not in data
    lines = text.splitlines()
    status = [line for line in lines if "[PROGRESS]" in line]
    informative = [line for line in lines if "[PROGRESS]" not in line]
    assert status and all(PROGRESS.search(line) for line in status), status
    assert status[-1].endswith(" end") and "step=6/6" in status[-1]
    assert all(len(line.encode()) + 1 <= PROGRESS_LINE_MAX_B for line in status)
    assert len(status) <= wall_s / interval_s + 2
    bound = sum(len(line.encode()) + 1 for line in informative) + PROGRESS_LINE_MAX_B * (wall_s / interval_s + 2)
    assert len(data) <= bound, f"{len(data)} B > {bound:.0f} B"
    assert any("[GRAD] step=6" in line for line in informative)


@pytest.mark.parametrize("value", ["0", "-1", ".nan"])
def test_interval_must_be_positive(value):
    from ris_dist.config import ConfigError
    from ris_dist.train.config import load_train_config

    with pytest.raises(ConfigError, match=r"log.progress_interval_s: must be > 0"):
        load_train_config("phase0", [f"log.progress_interval_s={value}"])
