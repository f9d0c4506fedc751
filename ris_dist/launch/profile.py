"""Cluster profiles: a typed, validated YAML (configs/cluster/NAME.yaml) plus CLI overrides.

Every value that ends up in a shell line or an ``#SBATCH`` line is either checked against a
strict pattern here or shell-quoted when rendered; values such as ``gpu; rm -rf ~``, ``$(id)``
or a newline are rejected with a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..config.schema import ConfigError, build, check, read_yaml
from .recipe import DEFAULT_RECIPE, RECIPES

#: partition / account / qos / job-name style identifiers
IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
#: run names become folder names and job names
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: SLURM feature expressions: a100&ib, [rack1|rack2], gpu*2 (no spaces, quotes, $, ;, backticks)
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.:+\-&|,\[\]*]{1,200}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
OVERRIDE_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
#: characters refused in free text (env values, setup lines, override values) even though it is quoted
UNSAFE_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")
SHELL_META_RE = re.compile(r"[$`;&|<>\\\x00-\x1f\x7f]")

Backend = Literal["auto", "single", "cpu_ddp", "ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3"]
BACKENDS: tuple[str, ...] = ("auto", "single", "cpu_ddp", "ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3")


def check_ident(key: str, value: str, pattern: re.Pattern = IDENT_RE, what: str = "letters, digits, _ . + -") -> None:
    check(isinstance(value, str) and bool(pattern.fullmatch(value)), key, value,
          f"must match {pattern.pattern} ({what}); shell metacharacters, spaces and newlines are refused")


def check_text(key: str, value: str, meta: bool = False) -> None:
    """Free text that is quoted anyway: refuse control characters (newlines) and, if meta, $ ` ; & | < > \\."""
    bad = (SHELL_META_RE if meta else UNSAFE_CHARS_RE).search(value)
    check(bad is None, key, value, "contains a forbidden character " + (repr(bad.group()) if bad else ""))


@dataclass(frozen=True)
class ClusterProfile:
    """Resources and environment of one cluster (or of this machine, ``local.yaml``)."""

    partition: str = ""
    """SLURM partition ("" = the cluster's default)."""
    account: str = ""
    qos: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    """GPUs per node; also the processes per node of GPU backends (0 = CPU only)."""
    procs_per_node: int = 0
    """Training processes per node; 0 = gpus_per_node, or 1 (single) / 2 (cpu_ddp) without GPUs."""
    cpus_per_task: int = 1
    """CPUs of the one task per node (it runs `accelerate launch`, which starts the ranks)."""
    mem_gb: int = 0
    """Memory per node in GB (0 = the partition default)."""
    time_min: int = 60
    constraint: str = ""
    exclusive: bool = False
    signal_delay_s: int = 120
    """SLURM sends USR2 this long before the time limit; the trainer saves and the job is requeued."""
    max_requeues: int = 3
    """Requeues (preemption or timeout) allowed per phase job; then the job ends as failed."""
    backend: Backend = "auto"
    """Accelerate config under configs/accelerate/ (single = plain `python -m ris_dist.train`);
    auto = ddp with GPUs, else single on one node with one process, else cpu_ddp."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables for the job (values are shell-quoted)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job's command (module load, source venv). Profile files only."""
    python: str = ""
    """Interpreter on the compute nodes ("" = the one running submit.py)."""
    log_dir: str = "runs/_slurm"
    """submitit's folder for job scripts, pickles and logs (%j = job id)."""
    recipe: str = DEFAULT_RECIPE
    """Curriculum whose phase configs the jobs run (tiny, full, full-lite; --recipe overrides)."""

    def __post_init__(self) -> None:
        for key in ("partition", "account", "qos"):
            if getattr(self, key):
                check_ident(key, getattr(self, key))
        if self.constraint:
            check_ident("constraint", self.constraint, CONSTRAINT_RE, "a SLURM feature expression")
        check(1 <= self.nodes <= 4096, "nodes", self.nodes, "must be in 1..4096")
        check(0 <= self.gpus_per_node <= 64, "gpus_per_node", self.gpus_per_node, "must be in 0..64")
        check(0 <= self.procs_per_node <= 256, "procs_per_node", self.procs_per_node, "must be in 0..256")
        check(1 <= self.cpus_per_task <= 1024, "cpus_per_task", self.cpus_per_task, "must be in 1..1024")
        check(0 <= self.mem_gb <= 16384, "mem_gb", self.mem_gb, "must be in 0..16384")
        check(1 <= self.time_min <= 60 * 24 * 60, "time_min", self.time_min, "must be in 1..86400")
        check(0 <= self.signal_delay_s <= 3600, "signal_delay_s", self.signal_delay_s, "must be in 0..3600")
        check(self.signal_delay_s < self.time_min * 60, "signal_delay_s", self.signal_delay_s,
              "must be shorter than time_min")
        check(0 <= self.max_requeues <= 100, "max_requeues", self.max_requeues, "must be in 0..100")
        check(self.backend != "single" or self.nodes == 1, "backend", self.backend, "single needs nodes=1")
        check(self.backend != "single" or self.procs_per_node in (0, 1), "procs_per_node", self.procs_per_node,
              "backend single runs one process")
        for k, v in self.env.items():
            check_ident(f"env.{k}", k, ENV_KEY_RE, "a shell variable name")
            check_text(f"env.{k}", v)
        for i, line in enumerate(self.setup):
            check_text(f"setup[{i}]", line)
            check(bool(line.strip()), f"setup[{i}]", line, "must not be empty")
        if self.python:
            check_ident("python", self.python, re.compile(r"^[A-Za-z0-9_./+-]{1,300}$"), "a path")
        check_text("log_dir", self.log_dir, meta=True)
        check(bool(self.log_dir) and "'" not in self.log_dir and '"' not in self.log_dir and " " not in self.log_dir,
              "log_dir", self.log_dir, "must be a plain path")
        check(self.recipe in RECIPES, "recipe", self.recipe, f"unknown recipe (known: {', '.join(RECIPES)})")

    @property
    def engine(self) -> str:
        """The resolved backend (``auto`` made concrete)."""
        if self.backend != "auto":
            return self.backend
        if self.gpus_per_node:
            return "ddp"
        if self.nodes == 1 and self.procs_per_node in (0, 1):
            return "single"
        return "cpu_ddp"

    @property
    def procs(self) -> int:
        """Training processes per node."""
        if self.procs_per_node:
            return self.procs_per_node
        if self.gpus_per_node:
            return self.gpus_per_node
        return 2 if self.engine == "cpu_ddp" else 1


PROFILE_KEYS = tuple(ClusterProfile.__dataclass_fields__)


def load_profile(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ClusterProfile:
    """Read a profile YAML and apply CLI values (``None`` values are ignored)."""
    data: dict[str, Any] = {}
    where = ""
    if path:
        data = read_yaml(path)
        where = f"{path}: "
    profile = build(ClusterProfile, data, where=where)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if changes:
        merged = {**{k: getattr(profile, k) for k in PROFILE_KEYS}, **changes}
        profile = build(ClusterProfile, merged, where="command line: ")
    return profile


def with_changes(profile: ClusterProfile, **changes: Any) -> ClusterProfile:
    return replace(profile, **changes)


def check_run_name(name: str) -> None:
    check_ident("run_name", name, RUN_NAME_RE, "letters, digits, _ . -")


def check_overrides(items: list[str]) -> None:
    """``dotted.key=value`` for the trainer: strict keys, values without shell metacharacters."""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, value = item.split("=", 1)
        check_ident(f"override {key!r}", key, OVERRIDE_KEY_RE, "a dotted config key")
        check_text(f"override {key}", value, meta=True)
