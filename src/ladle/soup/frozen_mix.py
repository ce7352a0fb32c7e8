"""Σ wᵢ·θᵢ differentiable in w only, over frozen θᵢ: the learned soup's mix, at (N + 2) × one model of memory."""

from __future__ import annotations

import torch


class _FrozenMix(torch.autograd.Function):
    """∂L/∂wᵢ = ⟨∂L/∂out, θᵢ⟩. Autograd's own graph of products would keep model-sized temporaries per
    ingredient; this keeps references to the frozen θᵢ and allocates one output."""

    @staticmethod
    def forward(ctx, w, *tensors):
        ctx.tensors = tensors  # frozen ingredients: references, never copies
        out = tensors[0].to(torch.promote_types(tensors[0].dtype, w.dtype), copy=True).mul_(float(w[0]))
        for t, wi in zip(tensors[1:], w[1:].tolist()):
            out.add_(t, alpha=wi)
        return out

    @staticmethod
    def backward(ctx, grad):
        g = grad.reshape(-1)
        grad_w = torch.stack([torch.dot(g, t.reshape(-1).to(g.dtype)) for t in ctx.tensors])
        return (grad_w, *([None] * len(ctx.tensors)))


def frozen_weighted_sum(tensors: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    return _FrozenMix.apply(w, *tensors)
