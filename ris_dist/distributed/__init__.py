"""Distributed plumbing: the step gate, backends (torch/DDP, DeepSpeed), preemption, digests."""

from .gate import GateDecision, step_gate, total_grad_norm

__all__ = ["GateDecision", "step_gate", "total_grad_norm"]
