"""A real one-node SLURM (slurmctld + slurmd + slurmdbd/MariaDB + munge) for the launcher tests.

The node offers GRES ``gpu:2`` on fake character devices, so GPU requests are allocated for real.

Started by a session-scoped pytest fixture (tests/launch/conftest.py) and stopped at the end:
every daemon runs in the foreground as a child of the test process with private sockets,
ports, state and config under a temporary folder, so nothing is left behind and a system
SLURM or munge (if any) is not touched. Debian's packages must be installed (.ci/run does).
Clients find the cluster through ``SLURM_CONF`` (set in os.environ while the fixture lives).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

PACKAGES = ["slurm-wlm", "slurmdbd", "munge", "mariadb-server"]
#: GRES gpu:N on the test node (fake devices, see SlurmCluster._write_gres).
FAKE_GPUS = 2
BINARIES = ["slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "mariadb-install-db", "sbatch", "sacct"]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                      None)


def ensure_packages() -> None:
    """The tests install nothing (an apt run inside a test outlives its timeout); .ci/run does."""
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise RuntimeError(f"SLURM test cluster: {', '.join(missing)} not found: apt-get install -y "
                           + " ".join(PACKAGES))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout: float, what: str | Callable[[], str], poll: float = 0.2, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}) while waiting for {what}")
        out = cond()
        if out:
            return out
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what() if callable(what) else what}")


class SlurmCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ris_slurm_"))
        os.chmod(self.dir, 0o755)
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.host = socket.gethostname().split(".")[0]
        self.cpus = os.cpu_count() or 2
        mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
        self.mem_mb = int(mem_mb * 0.9)
        self.conf = self.dir / "etc" / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.env: dict[str, str] = {}
        self.started_at = 0.0

    # ---------------------------------------------------------------- helpers
    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> subprocess.Popen:
        log = open(self.dir / "log" / f"{name}.stdout", "wb")
        kw = {}
        if user:
            pw = pwd.getpwnam(user)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                                start_new_session=True, **kw)
        self.procs.append((name, proc))
        time.sleep(0.1)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start ({proc.returncode}): {self.tail(name)}")
        return proc

    def tail(self, name: str, n: int = 2000) -> str:
        text = ""
        for path in (self.dir / "log").glob(f"{name}*"):
            text += path.read_text(errors="replace")[-n:]
        return text

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check,
                              env={**os.environ, **self.env})

    # ---------------------------------------------------------------- start
    def start(self) -> "SlurmCluster":
        ensure_packages()
        t0 = time.monotonic()
        for sub in ("etc", "log", "state", "spool", "run", "db"):
            (self.dir / sub).mkdir()
        self.env = {"SLURM_CONF": str(self.conf)}
        try:
            self._start_munge()
            self._start_mariadb()
            self._write_confs()
            self._write_gres()
            self._start_slurm()
        except BaseException as err:
            logs = {n: self.tail(n) for n in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")}
            self.stop()
            raise RuntimeError(f"SLURM test cluster did not start: {err}\n" +
                               "\n".join(f"--- {n}:\n{t}" for n, t in logs.items() if t)) from err
        self.started_at = time.monotonic() - t0
        return self

    def _start_munge(self) -> None:
        mdir = self.dir / "munge"
        mdir.mkdir()
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(128))
        munge = pwd.getpwnam("munge")
        for p in (mdir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o755)
        os.chmod(key, 0o400)
        self._spawn("munged", [_which("munged"), "-F", f"--socket={self.munge_socket}", f"--key-file={key}",
                               f"--pid-file={mdir / 'munged.pid'}", f"--log-file={mdir / 'munged.log'}",
                               f"--seed-file={mdir / 'munged.seed'}"], user="munge")
        _wait(lambda: self.munge_socket.exists(), 15, "munged socket")

    def _start_mariadb(self) -> None:
        db = self.dir / "db"
        mysql = pwd.getpwnam("mysql")
        os.chown(db, mysql.pw_uid, mysql.pw_gid)
        self.db_port = free_port()
        self.db_socket = db / "mysqld.sock"
        subprocess.run([_which("mariadb-install-db"), "--user=mysql", f"--datadir={db / 'data'}",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=120)
        self._spawn("mariadbd", [_which("mariadbd"), "--no-defaults", "--user=mysql", f"--datadir={db / 'data'}",
                                 f"--socket={self.db_socket}", f"--port={self.db_port}", "--bind-address=127.0.0.1",
                                 f"--pid-file={db / 'mariadb.pid'}", "--skip-log-bin",
                                 "--innodb-buffer-pool-size=64M"])
        _wait(lambda: self.db_socket.exists(), 60, "mariadb socket")
        sql = ("CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
               "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw';"
               "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';FLUSH PRIVILEGES;")
        _wait(lambda: subprocess.run([_which("mariadb"), f"--socket={self.db_socket}", "-uroot", "-e", sql],
                                     capture_output=True, timeout=30).returncode == 0, 60, "mariadb ready", poll=0.5)

    def _write_confs(self) -> None:
        d = self.dir
        self.ctld_port, self.slurmd_port, self.dbd_port = free_port(), free_port(), free_port()
        auth = f"socket={self.munge_socket},cred_expire=10"
        dbd = d / "etc" / "slurmdbd.conf"
        dbd.write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={self.munge_socket}", "DbdHost=localhost",
            f"DbdPort={self.dbd_port}", "SlurmUser=root", f"PidFile={d / 'run' / 'slurmdbd.pid'}",
            f"LogFile={d / 'log' / 'slurmdbd.log'}", "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1", f"StoragePort={self.db_port}", "StorageUser=slurm", "StoragePass=slurmpw",
            "StorageLoc=slurm_acct_db", ""]))
        os.chmod(dbd, 0o600)
        self.conf.write_text("\n".join([
            "ClusterName=ristest", f"SlurmctldHost={self.host}", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={self.ctld_port}", f"SlurmdPort={self.slurmd_port}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo={auth}",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost", f"AccountingStoragePort={self.dbd_port}",
            f"AccountingStoragePass={self.munge_socket}", "MailProg=/bin/true",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1024",
            "JobRequeue=1", "SchedulerParameters=sched_interval=5", "DependencyParameters=kill_invalid_depend",
            "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
            "SlurmctldParameters=preempt_send_user_signal", "SlurmdParameters=config_overrides",
            "ReturnToService=2", "KillWait=10", "MinJobAge=600", "InactiveLimit=0", "SlurmctldTimeout=30",
            "SlurmdTimeout=60", "Waittime=0",
            "GresTypes=gpu", "AccountingStorageTRES=gres/gpu",
            f"NodeName={self.host} CPUs={self.cpus} RealMemory={self.mem_mb} Gres=gpu:{FAKE_GPUS} State=UNKNOWN",
            "PartitionName=low Nodes=ALL Default=YES PriorityTier=1 GraceTime=60 MaxTime=INFINITE State=UP",
            "PartitionName=high Nodes=ALL Default=NO PriorityTier=10 MaxTime=INFINITE State=UP", ""]))

    def _write_gres(self) -> None:
        """Fake GPUs: character devices (/dev/null's 1:3) that SLURM allocates and exports as
        CUDA_VISIBLE_DEVICES; no process can compute on them, so torch still sees no GPU."""
        dev = self.dir / "dev"
        dev.mkdir()
        for i in range(FAKE_GPUS):
            os.mknod(dev / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        (self.dir / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.host} Name=gpu File={dev}/nvidia[0-{FAKE_GPUS - 1}]\n")

    def _start_slurm(self) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        _wait(lambda: _port_open(self.dbd_port), 60, "slurmdbd port", poll=0.3, procs=self.procs)
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        _wait(lambda: self.run("scontrol", "ping", check=False).stdout.count("UP") >= 1, 60, "slurmctld",
              poll=0.3, procs=self.procs)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.host])
        _wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip().startswith("idle"), 60,
              "node idle", poll=0.3, procs=self.procs)
        _wait(lambda: self.run("sacct", "-n", "-X", "-S", "now-1hour", check=False).returncode == 0, 60,
              "sacct", poll=0.5)

    # ---------------------------------------------------------------- queries
    def sacct(self, job_id: str, fields: str = "JobID,State,ExitCode,Start,End") -> list[dict[str, str]]:
        out = self.run("sacct", "-n", "-P", "-X", "-D", "-j", str(job_id), "-o", fields, check=False).stdout
        keys = fields.split(",")
        return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]

    def sacct_filled(self, job_id: str, field: str, timeout: float = 30.0) -> str:
        """The job's `field` once slurmdbd has recorded it. slurmctld sends job records to the
        database asynchronously, so a field such as AllocTRES can read empty for a moment after
        the job has already finished."""
        def read() -> str:
            rows = self.sacct(job_id, f"JobID,{field}")
            return rows[0][field] if rows else ""
        return _wait(read, timeout, lambda: f"sacct {field} of job {job_id} (now {read()!r})", poll=0.5)

    def state(self, job_id: str) -> str:
        rows = self.sacct(job_id, "JobID,State")
        return rows[-1]["State"].split()[0] if rows else "UNKNOWN"

    def wait_state(self, job_id: str, states: tuple[str, ...], timeout: float) -> str:
        # The message is built at the timeout, so it says where the job got stuck.
        return _wait(lambda: (s := self.state(job_id)) in states and s, timeout,
                     lambda: f"job {job_id} to reach {states} (now {self.state(job_id)}; "
                     f"{self.run('squeue', '-h', '-j', str(job_id), '-o', '%T %r', check=False).stdout.strip()})",
                     poll=1.0)

    def cancel_all(self) -> None:
        self.run("scancel", "--user=root", check=False)
        try:
            _wait(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 40, "empty queue", poll=0.5)
        except TimeoutError:
            pass

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        if any(n == "slurmctld" for n, _ in self.procs):
            try:
                self.cancel_all()
            except Exception:
                pass
        stepds = self._our_stepds()
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        for pid in stepds:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _our_stepds(self) -> list[int]:
        """slurmstepd processes of this cluster (their spool dir is ours), by pid."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                if not cmd.startswith(b"slurmstepd"):
                    continue
                if any(str(self.dir).encode() in p for p in (entry / "environ").read_bytes().split(b"\0")) or \
                        os.readlink(entry / "cwd").startswith(str(self.dir)):
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":  # manual check: python tests/launch/slurm_cluster.py
    c = SlurmCluster().start()
    try:
        print(f"started in {c.started_at:.1f}s at {c.dir}")
        print(c.run("sinfo").stdout)
        jid = c.run("sbatch", "--parsable", f"--output={c.dir}/log/job-%j.out", "--wrap", "hostname").stdout.strip()
        print("job", jid, c.wait_state(jid, ("COMPLETED", "FAILED"), 60))
    finally:
        c.stop()
