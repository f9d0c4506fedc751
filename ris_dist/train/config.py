"""The training config: one typed dataclass per section, loaded from a phase YAML plus overrides.

Loss weights have no defaults but 0: a weight the phase config does not name is 0, and the
resolved config (every value, defaults included) is saved in the run folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..config.schema import ConfigError, apply_overrides, build, check, parse_overrides, read_yaml, to_dict
from ..config.system import resolve_named
from ..loss_config import LossConfig
from ..model.config import MODEL_PRESETS, ModelConfig
from .run_config import (
    CheckpointConfig,
    DebugConfig,
    DistConfig,
    LogConfig,
    ProfileConfig,
)


@dataclass(frozen=True)
class DataConfig:
    train_scenes: int = 4096
    """Scenes per training epoch (global indices 0..train_scenes-1 of train_split)."""
    val_scenes: int = 512
    """Validation scenes (global indices 0..val_scenes-1 of val_split)."""
    train_split: str = "train"
    """Split name of the training scenes (part of every scene's random key)."""
    val_split: str = "val"
    """Phase 0 sets val_split = train_split with the same counts: identical sets (overfit smoke test)."""
    seed: int = 0
    """Dataset seed: a scene is a pure function of (seed, split, index)."""
    batch_size: int = 64
    """GLOBAL micro-batch size: split across ranks, so 1 or N processes see the same scene stream and
    loss. An optimizer step sees batch_size × optim.grad_accum_steps scenes."""
    val_batch_size: int = 128
    """Validation batch size per process (Accelerate's loader gives each process this many scenes)."""
    shuffle: bool = True
    """Visit the training scenes in a new seeded order every epoch (the same on every rank); false = index order."""
    generate_on_device: bool = True
    """Simulate scenes directly on the training device (no loader workers to starve a GPU)."""

    def __post_init__(self) -> None:
        for key in ("train_scenes", "val_scenes", "batch_size", "val_batch_size"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    """Backbone learning rate (peak)."""
    head_lr_mult: float = 4.0
    """Head LR = lr x head_lr_mult."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 0.0
    """Clip the global grad norm to this value after the gate accepts a step; 0 = off. The same
    rule on every backend: grads × grad_clip / (norm + 1e-6) when that factor is < 1 (DDP with the
    gate's norm, DeepSpeed through its ``gradient_clipping``, which the trainer sets to this)."""
    warmup_steps: int = 0
    """Real optimizer steps of linear LR warmup from warmup_floor to 1 (then cosine decay); 0 = none."""
    warmup_floor: float = 0.1
    """LR multiplier at step 0 of warmup; > 0 so the first steps move the weights."""
    min_lr_ratio: float = 0.05
    """Cosine decays to lr x min_lr_ratio at the last step."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step, each of data.batch_size scenes (global); the gate decides
    only at the accumulation boundary. The step's loss is the mean over every scene it saw, so a
    short last step of an epoch weighs the micro-batches it really had."""
    backbone_lr_mult_initial: float = 1.0
    """Backbone LR multiplier during the first backbone_warm_steps steps (0 = frozen backbone)."""
    backbone_warm_steps: int = 0
    """Real optimizer steps during which backbone_lr_mult_initial applies (0 = never)."""

    def __post_init__(self) -> None:
        check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "must be > 0")
        check(self.head_lr_mult > 0, "head_lr_mult", self.head_lr_mult, "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        check(all(0 <= b < 1 for b in self.betas), "betas", self.betas, "must be in [0, 1)")
        check(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0")
        check(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "must be >= 0")
        check(0 < self.warmup_floor <= 1, "warmup_floor", self.warmup_floor, "must be in (0, 1]")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        check(self.grad_accum_steps >= 1, "grad_accum_steps", self.grad_accum_steps, "must be >= 1")
        check(0 <= self.backbone_lr_mult_initial <= 1, "backbone_lr_mult_initial", self.backbone_lr_mult_initial,
              "must be in [0, 1]")
        check(self.backbone_warm_steps >= 0, "backbone_warm_steps", self.backbone_warm_steps, "must be >= 0")


@dataclass(frozen=True)
class RampConfig:
    """A loss weight's multiplier: 0 before start_step, linear to 1 over ramp_steps."""

    start_step: int = 0
    """Optimizer step from which the weight is on (multiplier 0 before it)."""
    ramp_steps: int = 0
    """Steps of the linear ramp of the multiplier from 0 to 1; 0 = the full weight at start_step."""

    def __post_init__(self) -> None:
        check(self.start_step >= 0, "start_step", self.start_step, "must be >= 0")
        check(self.ramp_steps >= 0, "ramp_steps", self.ramp_steps, "must be >= 0")

    def factor(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.ramp_steps == 0:
            return 1.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps)


@dataclass(frozen=True)
class BetaConfig:
    """β of R_eff = (1-β)R_pred + βR_samp: linear from start to end over ramp_steps.

    The loss (and the validation NMSE) see the ramped β. MUSIC, in validation, the spectrum
    images and the saved ``best/`` checkpoint that ``Localizer``/``evaluate`` serve, sees
    ``localize`` when it is set: the mix that localizes best need not be the one whose NMSE is
    lowest (README, "Localization β").
    """

    start: float = 0.0
    """β at step 0."""
    end: float = 0.0
    """β after ramp_steps (and throughout when ramp_steps is 0)."""
    ramp_steps: int = 0
    """Optimizer steps of the linear ramp from start to end."""
    localize: float | None = None
    """β of the R_eff that MUSIC searches; None = the training β at that step."""

    def __post_init__(self) -> None:
        check(0 <= self.start <= 1, "start", self.start, "must be in [0, 1]")
        check(0 <= self.end <= 1, "end", self.end, "must be in [0, 1]")
        check(self.ramp_steps >= 0, "ramp_steps", self.ramp_steps, "must be >= 0")
        check(self.localize is None or 0 <= self.localize <= 1, "localize", self.localize,
              "must be null or in [0, 1]")

    def value(self, step: int) -> float:
        if self.ramp_steps == 0:
            return self.end
        t = min(1.0, step / self.ramp_steps)
        return self.start + (self.end - self.start) * t

    def localize_value(self, step: int) -> float:
        """β of what MUSIC searches at ``step``."""
        return self.value(step) if self.localize is None else self.localize


@dataclass(frozen=True)
class AmpConfig:
    dtype: Literal["none", "bf16", "fp16"] = "none"
    """Autocast dtype. fp16 uses a GradScaler whose found_inf is all-reduced across ranks."""
    init_scale: float = 2.0**16
    """Initial loss scale of the fp16 GradScaler."""

    def __post_init__(self) -> None:
        check(self.init_scale > 0, "init_scale", self.init_scale, "must be > 0")


@dataclass(frozen=True)
class AveragingConfig:
    """EMA or SWA of the weights (off by default)."""

    enabled: bool = False
    """Keep the averaged weights (ema: validated and saved as best/; swa: saved as swa/)."""
    decay: float = 0.999
    """EMA only: decay per optimizer step."""
    start_step: int = 0
    """SWA only: first step that enters the running average."""

    def __post_init__(self) -> None:
        check(0 < self.decay < 1, "decay", self.decay, "must be in (0, 1)")
        check(self.start_step >= 0, "start_step", self.start_step, "must be >= 0")


@dataclass(frozen=True)
class ValConfig:
    every_steps: int = 0
    """Validate every N optimizer steps; 0 = once per epoch."""
    localize: bool = False
    """Also run MUSIC (localize) and the localization metrics."""
    k_source: Literal["head", "mdl", "oracle"] = "mdl"
    """Where K̂ comes from when localizing: the model's K head, MDL, or the true K."""
    k_decision: Literal["map", "success"] = "map"
    """How the K head's probabilities become K̂ (k_source: head): ``map`` = argmax (best K_acc);
    ``success`` = argmax p(k)·q_k(SNR) with q_k calibrated on this validation (best expected
    success; see ris_dist.localize.decision). Validation, best/meta.json and the Localizer use it."""
    at_start: bool = False
    """Also validate before the first step (the reference 'first validation' of a phase)."""
    image_scenes: int = 0
    """Log MUSIC spectrum slices of this many fixed validation scenes to TensorBoard (needs localize)."""
    primary: Literal["loss", "k_loc"] = "loss"
    """Metric that picks the best checkpoint (loss: lower is better; k_loc: higher)."""
    patience: int = 0
    """Early stop after this many validations without improvement; 0 = never."""
    min_delta: float = 0.0
    """An improvement of the primary metric counts (new best, patience reset) only beyond this
    absolute margin, so a noise-level change does not replace the checkpoint the gate judges."""

    def __post_init__(self) -> None:
        check(self.every_steps >= 0, "every_steps", self.every_steps, "must be >= 0")
        check(self.patience >= 0, "patience", self.patience, "must be >= 0")
        check(self.min_delta >= 0, "min_delta", self.min_delta, "must be >= 0")
        check(not (self.primary == "k_loc" and not self.localize), "primary", self.primary,
              "k_loc needs val.localize: true")
        check(self.k_decision == "map" or (self.localize and self.k_source == "head"), "k_decision",
              self.k_decision, "success needs val.localize: true and val.k_source: head")


@dataclass(frozen=True)
class GateConfig:
    """Phase acceptance gate, written to gate.json at the end of the run.

    Criteria by kind (reference = the phase's first validation, i.e. the model it started from):
    phase0: selftest + final val NMSE <= max_val_nmse.
    phase1: success and k_loc rise, K_acc does not fall (beyond drop_tol), RMSEs within rmse_tol.
    phase2: K_acc rises, K_under falls, RMSEs within rmse_tol.
    phase3: K_acc and success do not fall (beyond drop_tol), RMSEs within rmse_tol.
    """

    kind: Literal["phase0", "phase1", "phase2", "phase3"] = "phase0"
    """Which phase's criteria the gate applies (see the class doc)."""
    enforce: bool = True
    """A failed gate makes the process exit non-zero."""
    rmse_tol: float = 0.1
    """Relative RMSE increase allowed where RMSEs must be 'no worse' (phases 1-3; tiny's phase 1 sets 0)."""
    rmse_k: Literal["own", "oracle"] = "own"
    """Which K̂ the RMSE criteria judge: ``own``, the validation's K̂; ``oracle``, MUSIC on R_eff with
    each scene's true K (phases 2-3 with val.k_decision: success, whose per-K runs hold it). When a
    K head starts to name weaker sources the own-K̂ RMSEs rise with no loss of accuracy."""
    drop_tol: float = 0.0
    """Absolute drop of K_acc/success allowed where they must 'not fall'."""
    max_val_nmse: float = 0.0
    """Phase 0: final validation NMSE must be <= this; 0 disables the criterion."""
    selftest_tol: float = 1e-4
    """|nmse(R,R)|, |nmse(0,R) - 1| and |oracle| must be <= this."""


def check_profile_steps(cfg: TrainConfig) -> None:
    """profile.steps must lie within the steps the run takes (epochs of the data, capped by max_steps)."""
    if cfg.profile.steps is None:
        return
    per_epoch = math.ceil(cfg.data.train_scenes / (cfg.data.batch_size * cfg.optim.grad_accum_steps))
    total = per_epoch * cfg.epochs if not cfg.max_steps else min(per_epoch * cfg.epochs, cfg.max_steps)
    check(cfg.profile.steps[1] <= total, "profile.steps", list(cfg.profile.steps),
          f"the run takes {total} optimizer steps")


@dataclass(frozen=True)
class TrainConfig:
    phase: str
    """Phase name; the run writes runs/<run_name>/<phase>/."""
    mode: Literal["standard", "pure_overfit"] = "standard"
    """pure_overfit asserts beta=0, lam_cov=1, all other weights 0, no decay/dropout/AMP/EMA/SWA."""
    run_name: str = "default"
    """Run folder name under output_dir; every phase of a curriculum shares it."""
    output_dir: str = "runs"
    """Root folder of all runs."""
    system: str = "tiny"
    """System config name (tiny, full) or YAML path."""
    system_overrides: dict[str, Any] = field(default_factory=dict)
    """System keys to replace (e.g. {num_snapshots: 8}); the keys are those of the system YAML."""
    seed: int = 0
    """Seed of model initialization and dropout (the data has its own, data.seed)."""
    epochs: int = 1
    """Passes over data.train_scenes."""
    max_steps: int = 0
    """Stop after this many optimizer steps (smoke runs); 0 = run all epochs."""
    init_from: str = ""
    """Weights that initialize this run (ignored when resuming): a best/ folder, or "auto" for
    <output_dir>/<run_name>/<previous_phase>/best."""
    previous_phase: str = ""
    """The phase whose best model init_from=auto starts from."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**MODEL_PRESETS["tiny"]))
    """Network shape; model.preset: tiny|full fills it from a named preset, other model.* keys override."""
    data: DataConfig = field(default_factory=DataConfig)
    """Scenes, splits, seeds and batch sizes."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """AdamW, LR schedule, clipping and accumulation."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights (λ) and the forms of the loss terms."""
    ramps: dict[str, RampConfig] = field(default_factory=dict)
    """Per-weight ramps keyed by weight name (lam_k, lam_gap, ...)."""
    auto_weights: dict[str, float] = field(default_factory=dict)
    """Structure weights set at start-up so that term's share of the total loss is the given
    fraction on a calibration batch (e.g. {lam_subspace: 0.1}); the resolved λ is logged and saved."""
    beta: BetaConfig = field(default_factory=BetaConfig)
    """Mixing weight β of R_eff = (1-β)R_pred + βR_samp, for the loss and for MUSIC."""
    amp: AmpConfig = field(default_factory=AmpConfig)
    """Mixed precision (autocast dtype, fp16 loss scale)."""
    ema: AveragingConfig = field(default_factory=AveragingConfig)
    """Exponential moving average of the weights."""
    swa: AveragingConfig = field(default_factory=AveragingConfig)
    """Stochastic weight averaging (saved as swa/ at the end)."""
    val: ValConfig = field(default_factory=ValConfig)
    """Validation schedule, localization, K̂ rule, best-checkpoint metric and early stopping."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The phase acceptance gate written to gate.json."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints and resume."""
    log: LogConfig = field(default_factory=LogConfig)
    """Log lines, progress reports and experiment trackers."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Process-group timeout for every collective."""
    debug: DebugConfig = field(default_factory=DebugConfig)
    """Drills for tests and incident rehearsal (fault injection, preemption, index recording)."""
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    """torch.profiler around chosen optimizer steps."""

    def __post_init__(self) -> None:
        check(bool(self.run_name) and "/" not in self.run_name and not self.run_name.startswith("."),
              "run_name", self.run_name, "must be a plain folder name")
        check(bool(self.phase) and "/" not in self.phase, "phase", self.phase, "must be a plain folder name")
        check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        check(self.max_steps >= 0, "max_steps", self.max_steps, "must be >= 0")
        weight_names = {f.name for f in dataclasses.fields(self.loss.weights)}
        for name in self.ramps:
            check(name in weight_names, f"ramps.{name}", name, f"not a loss weight ({', '.join(sorted(weight_names))})")
        structure = weight_names - {"lam_cov", "lam_k"}  # every structure term's λ, from LossWeights itself
        for name, frac in self.auto_weights.items():
            check(name in structure, f"auto_weights.{name}", name, f"not a structure weight ({', '.join(sorted(structure))})")
            check(0 < frac < 1, f"auto_weights.{name}", frac, "target fraction must be in (0, 1)")
            check(getattr(self.loss.weights, name) == 0.0, f"auto_weights.{name}", name,
                  "set either loss.weights or auto_weights for a term, not both")
        check(sum(self.auto_weights.values()) < 1, "auto_weights", self.auto_weights, "fractions must sum to < 1")
        check(self.init_from != "auto" or bool(self.previous_phase), "previous_phase", self.previous_phase,
              "init_from=auto needs previous_phase")
        if self.gate.kind != "phase0":
            check(self.val.localize and self.val.at_start, "gate.kind", self.gate.kind,
                  "localization gates need val.localize: true and val.at_start: true (the reference)")
        check(self.gate.rmse_k == "own" or self.val.k_decision == "success", "gate.rmse_k", self.gate.rmse_k,
              "oracle needs val.k_decision: success (its per-K MUSIC runs hold the true-K estimates)")
        if self.mode == "pure_overfit":
            check_pure_overfit(self)
        check_profile_steps(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name / self.phase

    def resolved_init_from(self) -> Path | None:
        """The weights folder this run starts from; a missing predecessor is a one-line ConfigError."""
        if not self.init_from:
            return None
        if self.init_from == "auto":
            path = Path(self.output_dir) / self.run_name / self.previous_phase / "best"
            if not (path / "model.pt").is_file():
                raise ConfigError(f"init_from=auto: {path / 'model.pt'} not found; run {self.previous_phase} "
                                  f"for run_name={self.run_name} first, or pass init_from=PATH")
            return path
        path = Path(self.init_from)
        if not (path / "model.pt").is_file():
            raise ConfigError(f"init_from: {path / 'model.pt'} not found")
        return path


def check_pure_overfit(cfg: TrainConfig) -> None:
    """Refuse a 'pure' run with any hidden non-zero term; the message names the key."""
    w = cfg.loss.weights

    def need(ok: bool, key: str, value: Any, want: str) -> None:
        if not ok:
            raise ConfigError(f"mode=pure_overfit: {key} must be {want} (got {value!r})")

    need(cfg.beta.start == 0 and cfg.beta.end == 0, "beta", (cfg.beta.start, cfg.beta.end), "0")
    need(cfg.beta.localize in (None, 0.0), "beta.localize", cfg.beta.localize, "null or 0")
    need(w.lam_cov == 1.0, "loss.weights.lam_cov", w.lam_cov, "1")
    for f in dataclasses.fields(w):
        if f.name != "lam_cov":
            need(getattr(w, f.name) == 0.0, f"loss.weights.{f.name}", getattr(w, f.name), "0")
    need(cfg.optim.weight_decay == 0.0, "optim.weight_decay", cfg.optim.weight_decay, "0")
    need(cfg.model.dropout == 0.0, "model.dropout", cfg.model.dropout, "0")
    need(cfg.amp.dtype == "none", "amp.dtype", cfg.amp.dtype, "'none'")
    need(not cfg.ema.enabled, "ema.enabled", cfg.ema.enabled, "false")
    need(not cfg.swa.enabled, "swa.enabled", cfg.swa.enabled, "false")


def _expand_model_preset(data: dict[str, Any], where: str) -> dict[str, Any]:
    model = data.get("model")
    if isinstance(model, dict) and "preset" in model:
        model = dict(model)
        preset = model.pop("preset")
        if preset not in MODEL_PRESETS:
            raise ConfigError(f"{where}model.preset: unknown preset {preset!r} (known: {', '.join(MODEL_PRESETS)})")
        data = {**data, "model": {**MODEL_PRESETS[preset], **model}}
    return data


def load_train_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Load a phase YAML (a name like ``phase0`` or a path) and apply ``dotted.key=value`` overrides."""
    path = Path(path) if str(path).endswith((".yaml", ".yml")) else resolve_named(".", str(path))
    if isinstance(overrides, dict):
        parsed = overrides
    else:
        parsed = parse_overrides(overrides or [])
    data = apply_overrides(read_yaml(path), parsed)
    where = f"{path}: "
    return build(TrainConfig, _expand_model_preset(data, where), where=where)


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
