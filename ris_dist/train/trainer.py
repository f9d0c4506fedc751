"""The training loop. One code path for one process, DDP and DeepSpeed.

Per optimizer step: (micro-batches of) forward + backward, the global grad norm and AMP
found_inf from the backend, ONE gate decision shared by all ranks, then either a real
step followed by exactly one scheduler tick, or a skip that zeroes the gradients.

Outside logging steps the step reads nothing on the host but the gate's decision: losses
stay device tensors until a logging step, and every collective runs on ``accelerator.device``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time

import torch
import torch.distributed as dist

from ..config import ConfigError, load_system
from ..data.sampler import GlobalIndexStream
from ..distributed.backend import DeepSpeedBackend, TorchBackend, configure_deepspeed, make_accelerator, using_deepspeed
from ..distributed.gate import GateDecision, step_gate
from ..distributed.precision import check_launch_precision, deepspeed_precision_blocks, read_deepspeed_json
from ..distributed.preempt import PreemptionFlag
from ..exit_codes import EXIT_GATE_FAILED, EXIT_OK, EXIT_REQUEUE
from ..localize import SuccessTable
from ..losses import LossWeights, compute_loss, format_selftest, selftest
from ..model import build_model
from ..physics import simulate
from ..physics.scenes import DeferredSceneErrors
from . import checkpoint as ckpt
from .config import TrainConfig, dump_config
from .instrument import log_skip, log_step, parameter_digest, record_indices, spectrum_images
from .monitor import Monitor, setup_logging
from .phase_gate import evaluate_phase_gate
from .profiling import StepProfiler
from .progress import Progress
from .schedule import build_optimizer, build_scheduler
from .trackers import build_trackers
from .validate import make_val_loader, validate
from .weights import calibrate, weights_at

logger = logging.getLogger("ris_dist.train")



@dataclasses.dataclass
class TrainerState:
    step: int = 0
    """Gate decisions taken (optimizer-step attempts)."""
    real_steps: int = 0
    """Steps the gate accepted; the scheduler has ticked exactly this often."""
    skipped: dict[str, int] = dataclasses.field(default_factory=lambda: {"nonfinite": 0, "zero": 0, "found_inf": 0})
    epoch: int = 0
    position: int = 0
    """Scenes of the current epoch consumed globally (the index stream's resume point)."""
    best_metric: float | None = None
    best_step: int = 0
    evals_since_best: int = 0
    base_weights: dict[str, float] | None = None
    """Static loss weights after auto_weights calibration; restored on resume, never recomputed."""
    first_val: dict[str, float] | None = None
    best_val: dict[str, float] | None = None


class Trainer:
    def __init__(self, cfg: TrainConfig, preempt: PreemptionFlag | None = None):
        self.cfg = cfg
        check_launch_precision(cfg.amp.dtype)
        self.accelerator = make_accelerator(cfg.dist.timeout_s, cfg.optim.grad_accum_steps,
                                            log_with=build_trackers(cfg) or None)
        acc = self.accelerator
        setup_logging(acc.is_main_process, acc.process_index)
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.system = load_system(cfg.system, **cfg.system_overrides)
        torch.manual_seed(cfg.seed)
        model = build_model(self.system, cfg.model)
        counts = model.count_parameters()
        optimizer = build_optimizer(model, cfg.optim)
        self.world = acc.num_processes
        self.global_batch = cfg.data.batch_size
        if self.global_batch < self.world:
            raise ValueError(f"data.batch_size={self.global_batch} (global) is smaller than the world size {self.world}")
        steps_per_epoch = math.ceil(cfg.data.train_scenes / (self.global_batch * cfg.optim.grad_accum_steps))
        self.total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = build_scheduler(optimizer, self.total_steps, cfg.optim)
        init_path = cfg.resolved_init_from()
        if init_path is not None:
            ckpt.load_init(model, init_path, self.system)
            logger.info("initialized from %s", init_path)
        if using_deepspeed():
            configure_deepspeed(acc.state.deepspeed_plugin.deepspeed_config, self.global_batch, self.world,
                                cfg.optim.grad_accum_steps, cfg.optim.grad_clip)
            acc.state.deepspeed_plugin.deepspeed_config.update(
                deepspeed_precision_blocks(*read_deepspeed_json(), cfg.amp.dtype, cfg.amp.init_scale))
        if using_deepspeed() and (cfg.ema.enabled or cfg.swa.enabled):
            raise ConfigError("ema/swa: not supported under DeepSpeed here (use DDP)")
        self.model, self.optimizer = acc.prepare(model, optimizer)
        if using_deepspeed():
            self.backend = DeepSpeedBackend(acc, self.model)
        else:
            self.backend = TorchBackend(acc, self.model, self.optimizer, cfg.amp.dtype, cfg.amp.init_scale)
        acc.register_for_checkpointing(self.scheduler)
        if self.backend.scaler is not None:
            acc.register_for_checkpointing(self.backend.scaler)  # a requeued fp16 run keeps its loss scale
        self.ema = self._averaged(model, cfg.ema, ema=True)
        self.swa = self._averaged(model, cfg.swa, ema=False)
        self.state = TrainerState()
        self.monitor = Monitor(self.run_dir, acc, cfg)
        self.stream = GlobalIndexStream(cfg.data.train_scenes, cfg.data.seed, cfg.data.shuffle)
        self.val_loader = make_val_loader(acc, cfg.data.val_scenes, cfg.data.val_batch_size)
        self.preempt = preempt if preempt is not None else PreemptionFlag()
        self.scene_errors = DeferredSceneErrors(self.system)
        self.selftest: dict[str, float] = {}
        self.last_val: dict[str, float] = {}
        self.success_table: SuccessTable | None = None  # K̂ table of the last validation (k_decision: success)
        self._last_val_step = -1
        self._t0, self._samples = time.perf_counter(), 0
        self._log_startup(counts)

    # -- setup helpers -------------------------------------------------------------
    def _averaged(self, model, avg_cfg, ema: bool):
        if not avg_cfg.enabled:
            return None
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        fn = get_ema_multi_avg_fn(avg_cfg.decay) if ema else None
        averaged = AveragedModel(model, multi_avg_fn=fn, use_buffers=True)
        self.accelerator.register_for_checkpointing(averaged)
        return averaged

    def _log_startup(self, counts: dict[str, int]) -> None:
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        lr, mult = cfg.optim.lr, cfg.optim.head_lr_mult
        group = dist.get_backend() if dist.is_available() and dist.is_initialized() else "none"
        logger.info("run %s phase %s on %d process(es), backend=%s, device=%s, process_group=%s", cfg.run_name,
                    cfg.phase, self.world, self.backend.name, acc.device, group)
        logger.info("[AMP] dtype=%s params=%s loss_scale=%s", cfg.amp.dtype,
                    next(iter(self.backend.parameters())).dtype, self.backend.loss_scale())
        logger.info("Backbone: %.1fM @ LR=%.2e", counts["backbone"] / 1e6, lr)
        logger.info("Head: %.1fM @ LR=%.2e (%.1f×)", counts["head"] / 1e6, lr * mult, mult)
        weights = dataclasses.asdict(cfg.loss.weights)
        logger.info("[WEIGHTS] %s beta=%.3f->%.3f localize_beta=%.3f",
                    " ".join(f"{k}={v:g}" for k, v in weights.items()), cfg.beta.start, cfg.beta.end,
                    cfg.beta.localize_value(0))
        self.monitor.text("config", "```\n" + dump_config(cfg) + "\n```")

    # -- the step ----------------------------------------------------------------
    def _calibrate_weights(self) -> None:
        weights = calibrate(self.cfg, self.model, self.backend, self.system, self.accelerator.device)
        self.state.base_weights = weights
        logger.info("[WEIGHTS] resolved %s", " ".join(f"{k}={v:.4g}" for k, v in weights.items()))
        if self.accelerator.is_main_process:
            (self.run_dir / "weights.json").write_text(json.dumps(weights, indent=1))
        beta = self.cfg.beta
        self.monitor.scalars(self.state.step, {**weights, "beta": beta.value(self.state.step),
                                               "beta_localize": beta.localize_value(self.state.step)}, "weights")

    def _inject_value(self, step: int) -> float | None:
        inj = self.cfg.debug.inject_nonfinite_grad
        if step in inj.steps and self.accelerator.process_index in inj.ranks:
            return float(inj.value)
        return None

    def _micro_step(self, local_indices: torch.Tensor, step_count: int, weights: LossWeights, beta: float,
                    last: bool) -> tuple[list[str], torch.Tensor]:
        """Forward + backward of one micro-batch; returns the loss names and their sums over this
        rank's scenes as ONE device tensor (read on logging steps only)."""
        cfg, acc = self.cfg, self.accelerator
        n_local = int(local_indices.numel())
        # A rank with no scenes in a short global batch still joins DDP's all-reduce, with weight 0.
        indices = local_indices if n_local else torch.zeros(1, dtype=torch.int64)
        batch = simulate(self.system, indices, cfg.data.seed, cfg.data.train_split, device=acc.device,
                         errors=self.scene_errors)
        with self.backend.no_sync(last):
            with self.backend.autocast():
                out = self.model(batch.y, batch.H, batch.codes, batch.snr_db)
            result = compute_loss(out, batch, self.system, beta, cfg.loss, weights)
            # Sum over this rank's scenes / the step's global count (every micro-batch of it): the
            # mean over ranks (DDP, ZeRO) and micro-batches is then the mean over every scene of the
            # step, on any world size, and a short last step weighs only what it had.
            share = n_local * self.world / step_count
            loss = result.total * share
            if self.world > 1:
                # Keeps an unused head in the graph so DDP never waits for its gradients; its
                # zero gradient leaves Adam's update at exactly 0, as on one process.
                loss = loss + 0.0 * out.k_logits.float().sum()
            self.backend.backward(loss)
        named = {**result.raw, **{f"w_{k}": v for k, v in result.weighted.items()}, "total": result.total}
        values = torch.stack([torch.as_tensor(v, device=acc.device).detach().reshape(()).to(torch.float64)
                              for v in named.values()])
        return list(named), values * n_local

    def _optimizer_step(self, micro_batches: list[tuple[torch.Tensor, int]]) -> tuple[GateDecision, dict[str, float],
                                                                                       float]:
        cfg = self.cfg
        step = self.state.step + 1
        weights, beta = weights_at(self.state.base_weights, cfg.ramps, step), cfg.beta.value(step)
        inject = self._inject_value(step)
        step_count = sum(count for _, count in micro_batches)
        sums = None
        for i, (local, _) in enumerate(micro_batches):
            keys, values = self._micro_step(local, step_count, weights, beta, last=i == len(micro_batches) - 1)
            sums = values if sums is None else sums + values
        # Step-number based, so every rank takes the same branch (ZeRO-3 gathers are collectives).
        log_now = self._is_log_step(step)
        losses = self._global_means(keys, sums, step_count) if log_now else None
        if log_now:
            self.scene_errors.raise_if_any()
        if inject is not None:  # after DDP's sync / DeepSpeed's reduction: on this rank only
            self.backend.inject_nonfinite(inject)
        grad_norm, found_inf = self.backend.grad_norm_and_found_inf()
        decision = step_gate(grad_norm, found_inf, self.accelerator.device, self.preempt.local_signal())
        before = None
        if log_now and decision.step:
            with self.backend.full_parameters() as params:
                before = [p.detach().float().clone() for p in params]
        if decision.step:
            self.backend.step(cfg.optim.grad_clip, grad_norm)
            self.scheduler.step()
            self.state.real_steps += 1
            for averaged in (self.ema, self.swa):
                if averaged is not None and (averaged is self.ema or step >= cfg.swa.start_step):
                    averaged.update_parameters(self.accelerator.unwrap_model(self.model))
        else:
            self.backend.skip(decision.found_inf)
            self.state.skipped[decision.reason] += 1
        self.backend.finish_step()
        delta = 0.0
        if before is not None:
            with self.backend.full_parameters() as params:
                delta = float(torch.sqrt(sum(((p.detach().float() - b) ** 2).sum() for p, b in zip(params, before))))
        if not decision.step:
            log_skip(self.accelerator.process_index, step, decision.reason, sum(self.state.skipped.values()),
                     self.backend.loss_scale())
            if losses is None:  # a skip is logged on every rank, with this rank's means
                local_count = max(1, sum(int(local.numel()) for local, _ in micro_batches))
                losses = dict(zip(keys, (sums / local_count).tolist()))
        self.state.step = step
        return decision, (losses or {}) | {"beta": beta, "beta_localize": cfg.beta.localize_value(step),
                                   **{k: v for k, v in dataclasses.asdict(weights).items()}}, delta

    def _is_log_step(self, step: int) -> bool:
        return step % self.cfg.log.every_steps == 0 or step == 1

    def _global_means(self, keys: list[str], sums: torch.Tensor, global_count: int) -> dict[str, float]:
        """Scene-weighted means over all ranks (a collective: logging steps only, on every rank)."""
        if self.world > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        return dict(zip(keys, (sums / global_count).tolist()))

    # -- the loop ----------------------------------------------------------------
    def begin(self) -> None:
        """Everything before the first step: resume, loss-weight resolution, self-test, first validation."""
        self._resume_or_start()
        if self.state.base_weights is None:
            self._calibrate_weights()
        self._run_selftest()
        if self.cfg.val.at_start and self.state.step == 0:
            self._validate_and_track()

    def run(self) -> int:
        cfg, acc = self.cfg, self.accelerator
        self.begin()
        accum = cfg.optim.grad_accum_steps
        stream = self.stream.iterate(self.state.epoch, self.state.position, self.global_batch,
                                     acc.process_index, self.world, end_epoch=cfg.epochs)
        bar = Progress(self.total_steps, self.state.step, enabled=acc.is_main_process and cfg.log.progress_bar,
                       interval_s=cfg.log.progress_interval_s, desc=cfg.phase,
                       last_loss=lambda: self.monitor.last("loss", "total"))
        profiler = StepProfiler(cfg.profile, self.run_dir, acc.process_index, acc.is_main_process, acc.device.type)
        self._t0, self._samples = time.perf_counter(), 0
        exit_code, stop = EXIT_OK, False
        while not stop and self.state.step < self.total_steps:
            micro, epoch_end = [], False
            for _ in range(accum):
                item = next(stream, None)
                if item is None:
                    break
                epoch, position, local = item
                start = self.state.position if epoch == self.state.epoch else 0
                micro.append((local, position - start))
                self.state.epoch, self.state.position = epoch, position
                epoch_end = position == cfg.data.train_scenes
                if epoch_end:
                    break
            if not micro:
                break
            with profiler.step(self.state.step + 1):
                decision = self.step_once(micro)
            bar.update(self.state.step)
            step = self.state.step
            if (cfg.val.every_steps and step % cfg.val.every_steps == 0) or (not cfg.val.every_steps and epoch_end):
                stop = self._validate_and_track() or stop
            if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                self._save()
            preempt_signal = decision.preempt_signal  # agreed on in the gate's all-reduce
            if preempt_signal:
                logger.warning("preemption requested: saving at step %d and exiting for requeue", step)
                self._save()
                if acc.is_main_process:
                    (self.run_dir / "preempted.json").write_text(json.dumps(
                        {"step": step, "signal": preempt_signal, "exit_code": EXIT_REQUEUE}))
                exit_code, stop = EXIT_REQUEUE, True
        bar.close()
        profiler.close()
        self.scene_errors.raise_if_any()
        if exit_code == EXIT_OK:
            exit_code = self._finish()
        self._log_digest()
        self.monitor.close()
        return exit_code

    def step_once(self, micro: list[tuple[torch.Tensor, int]]) -> GateDecision:
        """One optimizer step with its instrumentation: what the loop (and the train-step bench) runs."""
        if self.cfg.debug.record_indices:
            record_indices(self.run_dir, self.accelerator.process_index, self.state.step + 1, self.state.epoch, micro)
        if self.state.step + 1 == self.cfg.debug.preempt_at_step and self.accelerator.is_main_process:
            # As if SLURM's signal had reached rank 0 only, before this step's gate carries it.
            self.preempt.trigger(signal.SIGUSR1)
        decision, losses, delta = self._optimizer_step(micro)
        self._samples += sum(count for _, count in micro)
        self._log_step(decision, losses, delta, self._samples / max(time.perf_counter() - self._t0, 1e-9))
        return decision

    def _resume_or_start(self) -> None:
        latest = ckpt.latest_valid(self.ckpt_dir) if self.cfg.checkpoint.resume else None
        if latest is None:
            return
        saved = ckpt.load(self.accelerator, latest, self.world, self.backend.name)
        self.state = TrainerState(**saved["trainer"])
        logger.info("resumed from %s at step %d (epoch %d, position %d)", latest, self.state.step,
                    self.state.epoch, self.state.position)

    def _run_selftest(self) -> None:
        cfg = self.cfg
        batch = simulate(self.system, torch.arange(min(cfg.data.val_scenes, cfg.data.val_batch_size)),
                         cfg.data.seed, cfg.data.val_split, device=self.accelerator.device)
        self.selftest = {k: float(v) for k, v in selftest(batch, self.system, cfg.loss, cfg.beta.value(0)).items()}
        logger.info(format_selftest(self.selftest))
        self.monitor.scalars(self.state.step, self.selftest, "selftest")

    def _log_step(self, d: GateDecision, losses: dict[str, float], delta: float, samples_per_s: float) -> None:
        step = self.state.step
        if step % self.cfg.log.every_steps == 0 or step == 1 or not d.step:
            lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            log_step(self.monitor, step, d, losses, delta, lrs, self.backend.loss_scale(),
                     sum(self.state.skipped.values()), self.state.real_steps, samples_per_s)

    def _validate_and_track(self) -> bool:
        """Validate, track the best model; True means early stop."""
        cfg = self.cfg
        result = validate(self.accelerator, self._eval_model(), self.backend, self.system, cfg, self.val_loader,
                          cfg.beta.value(self.state.step), cfg.beta.localize_value(self.state.step))
        metrics, self.success_table = result.metrics, result.success_table
        self.last_val, self._last_val_step = metrics, self.state.step
        if self.state.first_val is None:
            self.state.first_val = metrics
        if cfg.val.localize and cfg.val.image_scenes:
            self._log_spectrum_images()
        logger.info("[VAL] step=%d %s", self.state.step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        self.monitor.scalars(self.state.step, metrics, "val")
        value = metrics["nmse"] if cfg.val.primary == "loss" else metrics["k_loc"]
        best, margin = self.state.best_metric, cfg.val.min_delta
        better = best is None or (value < best - margin if cfg.val.primary == "loss" else value > best + margin)
        if better:
            self.state.best_metric, self.state.best_step, self.state.evals_since_best = value, self.state.step, 0
            self.state.best_val = metrics
            self._save_best(metrics)
        else:
            self.state.evals_since_best += 1
        return bool(cfg.val.patience) and self.state.evals_since_best >= cfg.val.patience

    def _log_spectrum_images(self) -> None:
        """MUSIC spectrum slices of a few fixed validation scenes, true and estimated sources marked."""
        from ..covariance import effective_covariance
        from ..localize import choose_num_sources, localize

        cfg = self.cfg
        count = min(cfg.val.image_scenes, cfg.data.val_scenes)
        batch = simulate(self.system, torch.arange(count), cfg.data.seed, cfg.data.val_split,
                         device=self.accelerator.device)
        model = self._eval_model()
        model.eval()
        with torch.no_grad(), self.backend.autocast():  # every rank: ZeRO-3 forwards are collective
            out = model(batch.y, batch.H, batch.codes, batch.snr_db)
        model.train()
        R_eff = effective_covariance(out.R_pred, batch.R_samp, cfg.beta.localize_value(self.state.step))
        if self.accelerator.is_main_process:
            k = choose_num_sources(out.k_logits, batch.snr_db, cfg.val.k_decision, self.success_table) \
                if cfg.val.k_source == "head" else (batch.num_sources if cfg.val.k_source == "oracle" else None)
            spectrum_images(self.monitor, self.system, batch, R_eff, localize(R_eff, self.system, num_sources=k),
                            self.state.step)

    def _eval_model(self):
        """What validation and best/ see: the EMA weights when EMA is on, else the live model."""
        return self.ema.module if self.ema is not None else self.model

    def _save_best(self, metrics: dict[str, float], folder: str = "best", model=None) -> None:
        validated = model is None
        model = model if model is not None else self._eval_model()
        state_dict = self.backend.export_state_dict() if model is self.model else model.state_dict()
        # The K̂ table is calibrated on the validated model; another one (SWA) is served with argmax.
        k_decision = self.cfg.val.k_decision if validated else "map"
        if k_decision != self.cfg.val.k_decision:
            logger.info("%s/: K̂ by argmax (val.k_decision %s was calibrated on the validated model only)",
                        folder, self.cfg.val.k_decision)
        if self.accelerator.is_main_process:
            ckpt.save_weights(self.run_dir / folder, state_dict, {
                "step": self.state.step, "metrics": metrics, "system": self.cfg.system,
                # What Localizer serves: the β MUSIC was validated with, not the loss's.
                "beta": self.cfg.beta.localize_value(self.state.step),
                "train_beta": self.cfg.beta.value(self.state.step),
                # No true K at inference: a model validated with the oracle K is served with its head.
                "k_source": "mdl" if self.cfg.val.k_source == "mdl" else "head",
                "k_decision": k_decision,
                "k_success_table": self.success_table.to_json() if k_decision == "success" else None,
                "system_overrides": self.cfg.system_overrides, "model": dataclasses.asdict(self.cfg.model)})
        self.accelerator.wait_for_everyone()

    def _save(self) -> None:
        kill = self.cfg.debug.kill_during_save_step == self.state.step
        state = {"trainer": dataclasses.asdict(self.state), "world_size": self.world, "backend": self.backend.name}
        ckpt.save(self.accelerator, self.ckpt_dir, self.state.step, state, self.cfg.checkpoint.keep_last,
                  kill_before_rename=kill)
        if self.accelerator.is_main_process:
            (self.run_dir / "preempted.json").unlink(missing_ok=True)

    def _finish(self) -> int:
        if self._last_val_step != self.state.step:
            self._validate_and_track()
        if self.swa is not None:
            self._save_best(self.last_val, folder="swa", model=self.swa.module)
        self._save()
        # The gate judges what the phase hands on: its best checkpoint's validation.
        gate = evaluate_phase_gate(self.cfg, self.selftest, self.state.first_val or {}, self.state.best_val or {})
        gate["best_step"] = self.state.best_step
        if self.accelerator.is_main_process:
            (self.run_dir / "gate.json").write_text(json.dumps(gate, indent=1))
        self.monitor.hparams({"phase": self.cfg.phase, "lr": self.cfg.optim.lr, "batch": self.global_batch,
                              "beta": self.cfg.beta.end, "beta_localize": self.cfg.beta.localize_value(self.state.step),
                              **(self.state.base_weights or {})}, self.state.best_val or {})
        logger.info("[GATE] %s %s", "PASS" if gate["passed"] else "FAIL",
                    " ".join(f"{c['name']}={c['value']:.4g}({'ok' if c['passed'] else 'FAIL'})"
                             for c in gate["criteria"]))
        if not gate["passed"] and self.cfg.gate.enforce:
            return EXIT_GATE_FAILED
        return EXIT_OK

    def _log_digest(self) -> None:
        with self.backend.full_parameters() as params:
            digest = parameter_digest(params)
        logging.getLogger("ris_dist.digest").warning("[DIGEST] rank=%d step=%d sha256=%s",
                                                     self.accelerator.process_index, self.state.step, digest)
