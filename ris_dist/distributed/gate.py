"""The step gate: one decision, identical on every rank, for every backend.

A step happens only when the global gradient norm is finite and > 0 and no rank saw an
AMP overflow. The decision comes from ONE unconditional all-reduce per optimizer step,
issued by every rank in the same order, so no collective ever sits inside a rank-local
branch and no rank can step while another skips.
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


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def step_gate(grad_norm: torch.Tensor, found_inf: torch.Tensor | bool = False) -> GateDecision:
    """Decide whether to step from this rank's view of the global grad norm.

    ``grad_norm`` is the global norm as this rank computed it (after DDP's gradient sync,
    or across DeepSpeed partitions); ranks can still disagree if one rank's gradients were
    corrupted after the sync, so the flags are MAX-reduced here. NaN is carried as a flag,
    not as a value, because MAX over NaN is not defined the same way on every backend.
    """
    norm = grad_norm.detach().to(torch.float64).reshape(())
    finite = bool(torch.isfinite(norm))
    flags = torch.stack([
        torch.tensor(0.0 if finite else 1.0, dtype=torch.float64),
        torch.as_tensor(found_inf, dtype=torch.float64).reshape(()).cpu(),
        norm.cpu() if finite else torch.tensor(0.0, dtype=torch.float64),
    ])
    device = grad_norm.device if grad_norm.device.type != "cpu" else torch.device("cpu")
    flags = _all_reduce_max(flags.to(device)).cpu()
    any_nonfinite, any_found_inf, max_norm = bool(flags[0] > 0), bool(flags[1] > 0), float(flags[2])
    if any_found_inf:
        return GateDecision(False, float("inf"), True, "found_inf")
    if any_nonfinite:
        return GateDecision(False, float("nan") if torch.isnan(norm) else float("inf"), False, "nonfinite")
    if max_norm <= 0.0:
        return GateDecision(False, 0.0, False, "zero")
    return GateDecision(True, max_norm, False, "step")


def total_grad_norm(parameters) -> torch.Tensor:
    """L2 norm over all local gradients (None grads count as zero). Non-finite stays non-finite."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)
