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


def frozen_ingredients(scorer, n: int) -> tuple[list[str], list[dict], dict]:
    """What a recipe that learns mixing weights mixes: the model's parameter keys among the bound ones (heads may be
    absent), each ingredient's parameters as frozen references on the device (no copies, no gradients), and the
    other tensors (BatchNorm statistics) of the uniform soup, which the learned weights do not touch."""
    selected = set(scorer.keys)
    param_keys = [k for k in scorer.parameter_keys() if k in selected]
    wanted = set(param_keys)
    states = [{k: v.to(scorer.device) for k, v in scorer.ingredient_state(i).items() if k in wanted} for i in range(n)]
    buffers = {k: v.to(scorer.device) for k, v in scorer.soup_state([1.0 / n] * n).items() if k not in wanted}
    return param_keys, states, buffers
