"""Backends: how to run backward, read the global grad norm, step and skip.

Plain torch (one process or DDP, optional fp16 GradScaler) and DeepSpeed (ZeRO 1/2/3) expose
the same four operations, so the training loop and the gate are written once. Under
DeepSpeed the engine is driven directly, because Accelerate's ``backward`` would also call
``engine.step()`` and no gate could veto it.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from .gate import total_grad_norm


def using_deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def make_accelerator() -> Accelerator:
    """An Accelerator that shards across processes on CPU (gloo) as well as on GPUs (NCCL).

    On CPU, Accelerate needs an explicit gloo process group (with DeepSpeed) and
    ``cpu=True`` (with DDP); without them every rank runs alone and nothing syncs.
    """
    cuda = torch.cuda.is_available()
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if multi_process and not cuda else []
    if using_deepspeed():
        return Accelerator(kwargs_handlers=handlers, step_scheduler_with_optimizer=False)
    return Accelerator(cpu=not cuda, kwargs_handlers=handlers, step_scheduler_with_optimizer=False)


class TorchBackend:
    """One process or DDP. fp16 uses a GradScaler whose found_inf is MAX-reduced every step."""

    name = "torch"

    def __init__(self, accelerator: Accelerator, model, optimizer, amp_dtype: str, init_scale: float):
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
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
        if self.scaler is None:
            return total_grad_norm(self.model.parameters()), torch.zeros(())
        self.scaler.unscale_(self.optimizer)
        norm = total_grad_norm(self.model.parameters())
        # found_inf from the unscaled gradients' finiteness, the same test GradScaler makes;
        # the gate MAX-reduces it, and skip()/finish_step() move every rank's scale together.
        return norm, (~torch.isfinite(norm)).float().reshape(())

    def inject_nonfinite(self, value: float) -> None:
        """Corrupt this rank's gradients after the DDP sync: the case DDP cannot catch."""
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.fill_(value)
                return

    def step(self, grad_clip: float) -> None:
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
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
    """ZeRO 1/2/3 through the engine: backward, global norm over partitions, decide, step or zero."""

    name = "deepspeed"

    def __init__(self, accelerator: Accelerator, engine):
        self.accelerator = accelerator
        self.engine = engine
        self.model = engine
        self.scaler = None
        self._found_inf = False

    def autocast(self):
        return contextlib.nullcontext()  # the engine casts according to its JSON

    def no_sync(self, last_micro_step: bool):
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

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
        from deepspeed.utils import safe_get_full_grad

        # safe_get_full_grad is a collective under ZeRO-3: every rank, every param, same order.
        squares = torch.zeros((), dtype=torch.float64)
        for p in self.engine.module.parameters():
            g = safe_get_full_grad(p)
            if g is not None:
                squares = squares + torch.linalg.vector_norm(g.detach().double()).cpu() ** 2
        # Under fp16 the gradients carry the loss scale; the gate and the logs see the true norm.
        norm = torch.sqrt(squares) / (self.loss_scale() or 1.0)
        # DeepSpeed's own overflow check (fp16/bf16) sees exactly this non-finite norm.
        found = torch.tensor(float(not math.isfinite(float(norm)) and self.engine.fp16_enabled()))
        return norm, found

    def inject_nonfinite(self, value: float) -> None:
        raise RuntimeError("DeepSpeed fault injection goes through the loss (see Trainer)")

    def step(self, grad_clip: float) -> None:
        self.engine.step()

    def finish_step(self) -> None:
        pass

    def skip(self, found_inf: bool) -> None:
        if found_inf and self.engine.fp16_enabled():
            # The engine's own overflow path: it sees the same non-finite gradients, skips the
            # update, zeroes them and backs its loss scale off, exactly as without the gate.
            self.engine.step()
            if self.engine.was_step_applied():
                raise RuntimeError("DeepSpeed applied a step the gate rejected as an fp16 overflow "
                                   "(its overflow check disagrees with the gate's)")
            return
        self.engine.optimizer.zero_grad(set_to_none=True)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights from the fp32 master copy (what best/ exports whatever the engine's dtype)."""
        from deepspeed.utils import safe_get_full_fp32_param

        state = self.accelerator.get_state_dict(self.engine)
        for name, p in self.engine.module.named_parameters():
            full = safe_get_full_fp32_param(p)  # a collective under ZeRO: every rank, same order
            if full is not None:
                state[name] = full
        return state

    def loss_scale(self) -> float | None:
        opt = self.engine.optimizer
        scale = getattr(opt, "cur_scale", None) or getattr(getattr(opt, "loss_scaler", None), "cur_scale", None)
        return float(scale) if scale is not None else None
