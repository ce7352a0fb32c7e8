"""The tensor maths of souping: small pure functions, no I/O, no model objects.

Every function takes tensors one at a time from an iterable, so a caller that reads lazily
keeps one accumulator and one input tensor in memory, whatever the number of ingredients.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def accumulator_dtype(input_dtype: torch.dtype, accumulate: torch.dtype = torch.float32) -> torch.dtype:
    """The requested accumulator, widened if the inputs are more precise (float64 stays float64)."""
    return torch.promote_types(input_dtype, accumulate)


def weighted_sum(
    tensors: Iterable[torch.Tensor], weights: Sequence[float], accumulate: torch.dtype = torch.float32
) -> torch.Tensor:
    """Σ wᵢ·xᵢ in the accumulator dtype, reading one xᵢ at a time. Zero weights still consume their tensor."""
    acc = None
    scratch = None
    for x, w in zip(tensors, weights, strict=True):
        if acc is None:
            acc = x.to(dtype=accumulator_dtype(x.dtype, accumulate), copy=True)
            if w != 1.0:
                acc.mul_(w)
        elif x.dtype == acc.dtype:
            acc.add_(x, alpha=w)
        else:
            if scratch is None:
                scratch = torch.empty(min(CONVERT_CHUNK, acc.numel()), dtype=acc.dtype, device=acc.device)
            add_converted_(acc, x, w, scratch)
    if acc is None:
        raise ValueError("weighted_sum needs at least one tensor")
    return acc


CONVERT_CHUNK = 1 << 20  # elements: a 4 MiB float32 buffer, reused


def add_converted_(acc: torch.Tensor, x: torch.Tensor, w: float, scratch: torch.Tensor) -> None:
    """acc += w·x for x of another dtype (bf16/fp16 into float32), converting through a small buffer.

    `acc.add_(x)` across dtypes allocates a full-size converted copy of x on every call; page-faulting
    that fresh memory costs more than the arithmetic (measured: bf16 soups ~3x slower).
    """
    a, b = acc.view(-1), x.reshape(-1)
    step = scratch.numel()
    for i in range(0, a.numel(), step):
        s = scratch[: min(step, a.numel() - i)]
        s.copy_(b[i : i + s.numel()])
        a[i : i + s.numel()].add_(s, alpha=w)


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Scale non-negative weights to sum to one."""
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("weights sum to zero")
    return [w / total for w in weights]


def interpolation_weights(alpha: float, n_finetuned: int = 1) -> list[float]:
    """WiSE-FT: θ = (1−α)·θ_base + α·mean(θ_finetuned). Returned as [base, ft₁, …, ftₙ]."""
    return [1.0 - alpha] + [alpha / n_finetuned] * n_finetuned


def task_vector(finetuned: torch.Tensor, base: torch.Tensor, accumulate: torch.dtype = torch.float32) -> torch.Tensor:
    """θ_ft − θ_base in the accumulator dtype."""
    return finetuned.to(accumulator_dtype(finetuned.dtype, accumulate)) - base.to(accumulator_dtype(base.dtype, accumulate))


def model_stock_ratio(cos: float, k: int) -> float:
    """Model Stock's interpolation ratio t = k·cosθ / (1 + (k−1)·cosθ) (Jang et al. 2024, eq. 5).

    cosθ is clamped to [0, 1]: the paper's geometry assumes fine-tuned weights on a shell around
    a centre, so a negative angle means that assumption failed and the base is kept (t = 0).
    """
    if k < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    c = min(max(cos, 0.0), 1.0)
    return k * c / (1.0 + (k - 1) * c)


def model_stock_mix(
    tensors: Iterable[torch.Tensor], base: torch.Tensor, accumulate: torch.dtype = torch.float32
) -> tuple[torch.Tensor, float, float]:
    """Model Stock for one tensor, in one pass: returns (merged, t, mean pairwise cosθ of task vectors).

    The mean pairwise cosine of k task vectors dᵢ is (‖Σ uᵢ‖² − Σ‖uᵢ‖²) / (k(k−1)) with uᵢ = dᵢ/‖dᵢ‖,
    so it needs one running sum of unit vectors, not all pairs. A zero task vector has cosine 0 to all.
    """
    base_acc = base.to(accumulator_dtype(base.dtype, accumulate))
    total = None
    unit_sum = torch.zeros_like(base_acc, dtype=torch.float64 if base_acc.dtype == torch.float64 else torch.float32)
    k = 0
    nonzero = 0
    for x in tensors:
        k += 1
        d = task_vector(x, base_acc, accumulate)
        norm = torch.linalg.vector_norm(d.double()).item()
        if norm > 0:
            nonzero += 1
            unit_sum.add_(d, alpha=1.0 / norm)
        if total is None:
            total = x.to(dtype=base_acc.dtype, copy=True)
        else:
            total.add_(x)
    if k < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    cos = (torch.linalg.vector_norm(unit_sum.double()).item() ** 2 - nonzero) / (k * (k - 1))
    t = model_stock_ratio(cos, k)
    merged = total.mul_(t / k).add_(base_acc, alpha=1.0 - t)
    return merged, t, cos


def pairwise_cosine(gram: torch.Tensor) -> torch.Tensor:
    """Cosine similarities from a Gram matrix of vectors; 0 where a vector is zero."""
    norms = gram.diagonal().clamp_min(0).sqrt()
    denom = torch.outer(norms, norms)
    return torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
