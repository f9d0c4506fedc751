"""Phase specs and the per-node training command (one task per node runs `accelerate launch`)."""

from __future__ import annotations

import shlex
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..config.schema import ConfigError, parse_overrides
from .profile import ClusterProfile, check_overrides, check_run_name
from .recipe import DEFAULT_RECIPE, check_recipe, recipe_config

MAX_PHASE = 3


@dataclass(frozen=True)
class Var:
    """A value known only on the node at run time (rendered as "$NAME" in shell scripts)."""

    name: str

    def shell(self) -> str:
        return f'"${self.name}"'


NODE_RANK, MAIN_IP, MAIN_PORT = Var("NODE_RANK"), Var("MAIN_IP"), Var("MAIN_PORT")
Arg = str | Var


def parse_phases(spec: str) -> list[int]:
    """``all`` → 0..3, ``2`` → [2], ``0-1`` → [0, 1]."""
    text = spec.strip()
    if text == "all":
        return list(range(MAX_PHASE + 1))
    try:
        if "-" in text:
            a, b = (int(x) for x in text.split("-", 1))
        else:
            a = b = int(text)
    except ValueError:
        raise ConfigError(f"--phase {spec!r}: expected N, A-B or all (phases 0..{MAX_PHASE})") from None
    if not (0 <= a <= b <= MAX_PHASE):
        raise ConfigError(f"--phase {spec!r}: expected 0 <= A <= B <= {MAX_PHASE}")
    return list(range(a, b + 1))


def phase_config(root: Path, phase: int, recipe: str = DEFAULT_RECIPE) -> Path:
    return root / recipe_config(recipe, phase)


def port_for_job(job_id: str | int) -> int:
    """Rendezvous port derived from the job id: the same on every node, distinct between jobs."""
    digits = "".join(ch for ch in str(job_id) if ch.isdigit())
    key = int(digits) if digits else zlib.crc32(str(job_id).encode())
    return 20000 + key % 20000


@dataclass(frozen=True)
class PhaseRequest:
    phases: list[int]
    run_name: str
    overrides: list[str]
    """Trainer overrides without run_name (that one is always passed explicitly)."""
    output_dir: str = "runs"
    recipe: str = DEFAULT_RECIPE
    """Which curriculum's phase configs run (ris_dist.launch.recipe.RECIPES)."""

    def run_dir(self, root: Path, phase: int) -> Path:
        out = Path(self.output_dir)
        return (out if out.is_absolute() else root / out) / self.run_name / f"phase{phase}"


def make_request(phase_spec: str, run_name: str | None, overrides: list[str],
                 recipe: str = DEFAULT_RECIPE) -> PhaseRequest:
    check_recipe(recipe)
    check_overrides(overrides)
    parsed = parse_overrides(overrides)
    rest = [o for o in overrides if o.split("=", 1)[0].strip() != "run_name"]
    if run_name is None:
        run_name = str(parsed.get("run_name", "default"))
    check_run_name(run_name)
    output_dir = str(parsed.get("output_dir", "runs"))
    return PhaseRequest(parse_phases(phase_spec), run_name, rest, output_dir, recipe)


def check_configs(root: Path, req: PhaseRequest) -> None:
    """Each phase config exists and loads with the overrides (a bad key fails here, not in the job)."""
    from ..train.config import load_train_config

    for p in req.phases:
        path = phase_config(root, p, req.recipe)
        if not path.is_file():
            raise ConfigError(f"phase {p}: config {path.relative_to(root)} not found")
        load_train_config(path.relative_to(root), [*req.overrides, f"run_name={req.run_name}"])


def check_inputs(root: Path, req: PhaseRequest) -> None:
    """Before submitting: configs are valid, and a chain starting after phase 0 has its input."""
    check_configs(root, req)
    first = req.phases[0]
    if first > 0:
        best = req.run_dir(root, first - 1) / "best" / "model.pt"
        if not best.is_file():
            rel = best.relative_to(root) if best.is_relative_to(root) else best
            raise ConfigError(f"--phase {first}: phase {first - 1}'s best checkpoint {rel} is missing "
                              f"(run --phase {first - 1} with --run-name {req.run_name} first)")


def train_command(phase: int, profile: ClusterProfile, req: PhaseRequest, python: str) -> list[Arg]:
    """argv of the one task per node; NODE_RANK / MAIN_IP / MAIN_PORT are filled in on the node."""
    train = ["-m", "ris_dist.train", "--config", recipe_config(req.recipe, phase), f"run_name={req.run_name}",
             *req.overrides]
    if profile.engine == "single":
        return [python, *train]
    return [python, "-m", "accelerate.commands.launch",
            "--config_file", f"configs/accelerate/{profile.engine}.yaml",
            "--num_machines", str(profile.nodes),
            "--num_processes", str(profile.nodes * profile.procs),
            "--machine_rank", NODE_RANK,
            "--main_process_ip", MAIN_IP,
            "--main_process_port", MAIN_PORT,
            *train]


def resolve(argv: list[Arg], values: dict[str, str]) -> list[str]:
    return [values[a.name] if isinstance(a, Var) else a for a in argv]


def to_shell(argv: list[Arg]) -> str:
    return " ".join(a.shell() if isinstance(a, Var) else shlex.quote(a) for a in argv)


def gate_status(run_dir: Path) -> bool | None:
    """The phase gate's verdict from ``run_dir/gate.json``: True, False, or None when not written.

    A gate.json that exists but cannot be read is an error in its own right (ConfigError
    naming the file), never mistaken for a missing gate.
    """
    import json

    gate_file = Path(run_dir) / "gate.json"
    if not gate_file.is_file():
        return None
    try:
        passed = json.loads(gate_file.read_text())["passed"]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{gate_file}: unreadable gate ({type(err).__name__}: {err})") from None
    return bool(passed)
