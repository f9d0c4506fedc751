"""The step gate: one decision, identical on every rank, for every backend.

A step happens only when the global gradient norm is finite and > 0 and no rank saw an
AMP overflow. The decision comes from ONE unconditional all-reduce per optimizer step,
issued by every rank in the same order, so no collective ever sits inside a rank-local
branch and no rank can step while another skips. The preemption flag rides in the same
all-reduce, so a step costs one collective and one host read-back, the decision's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GateDecision:
    step: bool
    grad_norm: float
    """The global grad norm (inf/nan when any rank's was non-finite)."""
    found_inf: bool
    """Any rank's AMP scaler (or DeepSpeed) reported an overflow."""
    reason: str
    """"step", "nonfinite", "zero" or "found_inf"."""
    preempt_signal: int = 0
    """The preemption signal any rank recorded before this gate (0 = none), the same on every rank."""


def step_gate(grad_norm: torch.Tensor, found_inf: torch.Tensor | bool, device: torch.device | str,
              preempt_signal: int = 0) -> GateDecision:
    """Decide whether to step from this rank's view of the global grad norm.

    ``grad_norm`` is the global norm as this rank computed it (after DDP's gradient sync,
    or across DeepSpeed partitions); ranks can still disagree if one rank's gradients were
    corrupted after the sync, so the flags are MAX-reduced here. ``device`` is the
    backend's (``accelerator.device``): the flags are built there whatever device the norm
    came from, because NCCL reduces CUDA tensors only. NaN is carried as a flag, not as a
    value, because MAX over NaN is not defined the same way on every backend. Nothing is
    read on the host before the reduce; ``tolist`` after it is the step's one host sync.
    """
    norm = grad_norm.detach().reshape(()).to(device=device, dtype=torch.float64)
    finite = torch.isfinite(norm)
    flags = torch.stack([
        (~finite).to(torch.float64),
        torch.isnan(norm).to(torch.float64),
        torch.as_tensor(found_inf).detach().reshape(()).to(device=device, dtype=torch.float64),
        torch.where(finite, norm, torch.zeros_like(norm)),
        torch.full((), float(preempt_signal), dtype=torch.float64, device=device),
    ])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    any_nonfinite, any_nan, any_found_inf, max_norm, signal = flags.tolist()
    preempt = int(signal)
    if any_found_inf > 0:
        return GateDecision(False, float("inf"), True, "found_inf", preempt)
    if any_nonfinite > 0:
        return GateDecision(False, float("nan") if any_nan > 0 else float("inf"), False, "nonfinite", preempt)
    if max_norm <= 0.0:
        return GateDecision(False, 0.0, False, "zero", preempt)
    return GateDecision(True, max_norm, False, "step", preempt)


def total_grad_norm(parameters, device: torch.device | str) -> torch.Tensor:
    """L2 norm over all local gradients (None grads count as zero), on ``device``. Non-finite stays non-finite."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False).to(device)
