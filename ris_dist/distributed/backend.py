"""Backends: how to run backward, read the global grad norm, step and skip.

Plain torch (one process or DDP, optional fp16 GradScaler) and DeepSpeed (ZeRO 1/2/3) expose
the same four operations, so the training loop and the gate are written once. Under
DeepSpeed the engine is driven directly, because Accelerate's ``backward`` would also call
``engine.step()`` and no gate could veto it.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from ..config import ConfigError
from .gate import total_grad_norm


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator(timeout_s: float = 600.0, grad_accum_steps: int = 1, **kwargs) -> Accelerator:
    """An Accelerator that shards across processes on CPU (gloo) as well as on GPUs (NCCL).

    On CPU, Accelerate needs an explicit gloo process group (with DeepSpeed) and
    ``cpu=True`` (with DDP); without them every rank runs alone and nothing syncs.
    ``timeout_s`` bounds every collective (NCCL, gloo, and DeepSpeed's group, which
    Accelerate creates with the same arguments): a rank that never arrives ends the
    others with an error instead of a hang. Under DeepSpeed, Accelerate's own
    accumulation count is set to the engine's, which owns accumulation there.
    ``kwargs`` go to ``Accelerator`` as they are (``log_with=`` trackers).
    """
    cuda = torch.cuda.is_available()
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    backend, timeout = ("nccl" if cuda else "gloo"), datetime.timedelta(seconds=timeout_s)
    if multi_process and not dist.is_initialized():
        # Accelerate drops a timeout equal to its class default (600 s) from what it passes on,
        # and then gloo and DeepSpeed use their own 30 min; a group created here keeps timeout_s,
        # and Accelerate and DeepSpeed both use an existing group.
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)
    handlers = [InitProcessGroupKwargs(backend=backend, timeout=timeout)] if multi_process else []
    if using_deepspeed():
        return Accelerator(kwargs_handlers=handlers, step_scheduler_with_optimizer=False,
                           gradient_accumulation_steps=grad_accum_steps, **kwargs)
    return Accelerator(cpu=not cuda, kwargs_handlers=handlers, step_scheduler_with_optimizer=False, **kwargs)


def configure_deepspeed(ds_cfg: dict, global_batch: int, world: int, grad_accum_steps: int,
                        grad_clip: float) -> None:
    """Write the trainer's batch, accumulation and clipping into the DeepSpeed config, in place.

    ``gradient_accumulation_steps`` is always ``optim.grad_accum_steps`` (Accelerate turns the
    JSON's ``"auto"`` into 1 before the trainer sees it). ``gradient_clipping`` may be
    ``"auto"`` in the JSON (the shipped ones are); a number there must agree with
    ``optim.grad_clip``, so the engine never clips differently from DDP.
    """
    have = ds_cfg.get("gradient_clipping", "auto")
    if have != "auto" and float(have) != float(grad_clip):
        raise ConfigError(f"DeepSpeed config gradient_clipping={have!r} disagrees with optim.grad_clip={grad_clip!r}; "
                          f"set it to \"auto\" (the trainer fills it in) or to {grad_clip!r}")
    ds_cfg["gradient_clipping"] = grad_clip
    ds_cfg["gradient_accumulation_steps"] = grad_accum_steps
    ds_cfg["train_micro_batch_size_per_gpu"] = math.ceil(global_batch / world)
    ds_cfg["train_batch_size"] = ds_cfg["train_micro_batch_size_per_gpu"] * grad_accum_steps * world


def _all_reduce_(t: torch.Tensor, op) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=op)
    return t


class TorchBackend:
    """One process or DDP. fp16 uses a GradScaler whose found_inf is MAX-reduced every step."""

    name = "torch"

    def __init__(self, accelerator: Accelerator, model, optimizer, amp_dtype: str, init_scale: float):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.device = accelerator.device
        self.device_type = accelerator.device.type
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_dtype]
        self.scaler = torch.amp.GradScaler(self.device_type, init_scale=init_scale) if amp_dtype == "fp16" else None
        self._backoff = False

    @property
    def is_ddp(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.MULTI_CPU or (
            self.accelerator.num_processes > 1)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def no_sync(self, last_micro_step: bool):
        """Skip DDP's all-reduce on micro-steps that are not an accumulation boundary."""
        if last_micro_step or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def parameters(self):
        return self.model.parameters()

    @contextlib.contextmanager
    def full_parameters(self):
        """All parameters, complete on this rank (for digests and Δ-param)."""
        yield list(self.accelerator.unwrap_model(self.model).parameters())

    def grad_norm_and_found_inf(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global norm and found_inf as tensors on ``accelerator.device``; nothing read on the host."""
        if self.scaler is None:
            return total_grad_norm(self.model.parameters(), self.device), torch.zeros((), device=self.device)
        self.scaler.unscale_(self.optimizer)
        norm = total_grad_norm(self.model.parameters(), self.device)
        # found_inf from the unscaled gradients' finiteness, the same test GradScaler makes;
        # the gate MAX-reduces it, and skip()/finish_step() move every rank's scale together.
        return norm, (~torch.isfinite(norm)).float().reshape(())

    def inject_nonfinite(self, value: float) -> None:
        """Corrupt this rank's gradients after the DDP sync: the case DDP cannot catch."""
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.fill_(value)
                return
        raise RuntimeError("debug.inject_nonfinite_grad: this rank has no gradient to corrupt")

    def step(self, grad_clip: float, grad_norm: torch.Tensor) -> None:
        """Clip with the norm the gate judged (no second norm pass), then step."""
        if grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), grad_clip, grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.step()

    def skip(self, found_inf: bool) -> None:
        self._backoff = found_inf  # finish_step zeroes the grads either way

    def finish_step(self) -> None:
        if self.scaler is not None:
            if self._backoff:
                self._back_off_scale()
            else:
                # The gate saw no overflow on any rank, so no rank's scaler recorded one either.
                self.scaler.update()
        self._backoff = False
        self.optimizer.zero_grad(set_to_none=True)

    def _back_off_scale(self) -> None:
        """What ``scaler.update()`` does after an overflow, on every rank, even one whose own gradients were finite."""
        state = self.scaler.state_dict()
        self.scaler.update(new_scale=float(state["scale"] * state["backoff_factor"]))
        self.scaler.load_state_dict({**self.scaler.state_dict(), "_growth_tracker": 0})

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self.accelerator.get_state_dict(self.model)

    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None


class DeepSpeedBackend:
    """ZeRO 1/2/3 through the engine: backward, global norm over partitions, decide, step or zero.

    DeepSpeed owns accumulation: the trainer marks each micro-batch's boundary
    (``no_sync(last)``), so ZeRO-1/2 sum every micro-batch's gradient and reduce once, at the
    boundary. Clipping is DeepSpeed's ``gradient_clipping``, which the trainer sets from
    ``optim.grad_clip`` (the same formula as ``clip_grads_with_norm_``).
    """

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator, engine):
        self.accelerator = accelerator
        self.device = accelerator.device
        self.engine = engine
        self.model = engine
        self.scaler = None
        opt = engine.optimizer
        if not isinstance(getattr(opt, "averaged_gradients", None), dict) or getattr(opt, "cpu_offload", False) \
                or getattr(opt, "offload_optimizer", False):
            raise ConfigError(f"DeepSpeed optimizer {type(opt).__name__}: the step gate needs ZeRO stage 1, 2 or 3 "
                             "without optimizer offload (zero_optimization.stage / offload_optimizer in the JSON)")

    def autocast(self):
        return contextlib.nullcontext()  # the engine casts according to its JSON

    def no_sync(self, last_micro_step: bool):
        """Tell the engine whether this micro-batch ends the accumulation (it reduces only then)."""
        self.engine.set_gradient_accumulation_boundary(last_micro_step)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        # The trainer's loss is already this micro-batch's share of the step's mean.
        self.engine.backward(loss, scale_wrt_gas=False)

    def parameters(self):
        return self.engine.module.parameters()

    @contextlib.contextmanager
    def full_parameters(self):
        """ZeRO-3 partitions parameters; gather them (a collective) so every rank sees all of them."""
        params = list(self.engine.module.parameters())
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield params
        else:
            yield params

    def grad_norm_and_found_inf(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The global norm from this rank's reduced partition: one SUM all-reduce, on the device.

        After the boundary backward every ZeRO stage keeps this rank's share of the reduced
        gradients in ``optimizer.averaged_gradients`` (disjoint across ranks, zero padding),
        so the sum of every rank's squares is the squared global norm.
        """
        opt = self.engine.optimizer
        grads = [g.detach() for group in opt.averaged_gradients.values() if group is not None for g in group]
        # float32 norms: under fp16 the scaled gradients' norms pass 65504, and an fp16 norm would be
        # inf where DeepSpeed's own overflow check (on the elements) sees none.
        local = (torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32)
                                                       for g in grads])).to(self.device, torch.float64)
                 if grads else torch.zeros((), dtype=torch.float64, device=self.device))
        squares = _all_reduce_(local.square().reshape(1), dist.ReduceOp.SUM)
        norm = squares.sqrt().reshape(()) / getattr(opt, "loss_scale", 1.0)  # fp16: the grads are scaled
        # DeepSpeed's own overflow check (fp16) sees exactly this non-finite norm.
        found = (~torch.isfinite(norm) if self.engine.fp16_enabled() else torch.zeros((), dtype=torch.bool,
                                                                                         device=self.device))
        return norm, found.to(torch.float64)

    def inject_nonfinite(self, value: float) -> None:
        """Corrupt this rank's own gradient partition after ``engine.backward``: only this rank holds it.

        ZeRO-1/2 keep the reduced gradients of the partition this rank's optimizer shard updates in
        ``averaged_gradients`` (what ``engine.step`` flattens, and what ``safe_get_full_grad`` reads
        through the hp mapping); ZeRO-3 keeps its local gradient partition there too (views of its
        flat partition buffer). With optimizer offload the partition lives elsewhere, and DeepSpeed's
        own norm would not read it, so the drill refuses to run instead of corrupting nothing.
        """
        opt = self.engine.optimizer
        if getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False):
            raise RuntimeError("debug.inject_nonfinite_grad: not supported with DeepSpeed optimizer offload")
        partitions = getattr(opt, "averaged_gradients", {})
        for group in sorted(partitions):
            for grad in partitions[group] or ():
                if grad is not None and grad.numel() and not getattr(grad, "_zero_padding", False):
                    grad.fill_(value)
                    return
        raise RuntimeError(f"debug.inject_nonfinite_grad: rank {self.accelerator.process_index} has no gradient "
                           f"partition to corrupt (ZeRO stage {self.engine.zero_optimization_stage()})")

    def step(self, grad_clip: float, grad_norm: torch.Tensor) -> None:
        self.engine.step()  # clips to the JSON's gradient_clipping, which the trainer set to grad_clip

    def finish_step(self) -> None:
        pass

    def skip(self, found_inf: bool) -> None:
        """Drop this step's gradients the way DeepSpeed's own overflow skip does."""
        if found_inf and self.engine.fp16_enabled():
            # The engine's own overflow path: it sees the same non-finite gradients, skips the
            # update, zeroes them and backs its loss scale off, exactly as without the gate.
            self.engine.step()
            if self.engine.was_step_applied():
                raise RuntimeError("DeepSpeed applied a step the gate rejected as an fp16 overflow "
                                   "(its overflow check disagrees with the gate's)")
            return
        opt = self.engine.optimizer
        opt.zero_grad(set_to_none=True)
        for key in opt.averaged_gradients:
            opt.averaged_gradients[key] = None

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The module's weights from the fp32 master copy (what best/ exports whatever the engine's dtype).

        Every rank must call it; under ZeRO-3 only the main process gets the dict (others None).
        """
        from deepspeed.utils import safe_get_full_fp32_param

        state = self.accelerator.get_state_dict(self.engine)
        for name, p in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(p)  # a collective under ZeRO: every rank, same order
            if state is not None and full is not None:
                state[name] = full
        return state

    def loss_scale(self) -> float | None:
        opt = self.engine.optimizer
        scale = getattr(opt, "cur_scale", None) or getattr(getattr(opt, "loss_scaler", None), "cur_scale", None)
        return float(scale) if scale is not None else None
