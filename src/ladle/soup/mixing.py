"""The tensor maths of souping: small pure functions, no I/O, no model objects.

Every function takes tensors one at a time from an iterable, so a caller that reads lazily
keeps one accumulator and one input tensor in memory, whatever the number of ingredients.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

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


# ---------------------------------------------------------------- task vectors: task arithmetic, TIES, DARE, SLERP


def task_vectors(tensors: Iterable[torch.Tensor], base: torch.Tensor,
                 accumulate: torch.dtype = torch.float32) -> Iterator[torch.Tensor]:
    """τᵢ = θᵢ − θ_base for each θᵢ, lazily: a fresh tensor each, in the accumulator dtype. θᵢ is let go
    before τᵢ is handed out, so a lazy reader holds one ingredient tensor at a time."""
    for x in tensors:
        tau = task_vector(x, base, accumulate)
        del x
        yield tau


def task_arithmetic(base: torch.Tensor, deltas: Iterable[torch.Tensor], lambda_: float,
                    accumulate: torch.dtype = torch.float32) -> torch.Tensor:
    """θ_base + λ·Σ δᵢ (Ilharco et al. 2023), summing the δᵢ one at a time; consumes (overwrites) the first δ.

    Summing task vectors, not λ·θᵢ with a base weight 1 − nλ: the weights' cancellation would cost
    n roundings of |θ| instead of roundings of the (much smaller) |τ|."""
    total = None
    for d in deltas:
        total = d if total is None else total.add_(d)
    if total is None:
        raise ValueError("task arithmetic needs at least one task vector")
    return total.mul_(lambda_).add_(base.to(accumulator_dtype(base.dtype, accumulate)))


def ties_keep_count(numel: int, density: float) -> int:
    """k = ⌈density·numel⌉ entries kept (at least one); the product is rounded to 9 decimals first, so that
    0.2·10 keeps 2 entries, not 3 (0.2 is slightly more than 1/5 in binary)."""
    return min(numel, max(1, math.ceil(round(density * numel, 9))))


def ties_cut(tau: torch.Tensor, density: float) -> tuple[float, int] | None:
    """Where TIES' trim cuts τ: (t, m) keeps the entries with |τ| > t and the first m (in flat, row-major order)
    with |τ| = t, k = ties_keep_count(numel, density) in all; None when it keeps every nonzero entry."""
    n = tau.numel()
    k = ties_keep_count(n, density)
    if k >= n:
        return None
    mag = tau.abs().reshape(-1)
    threshold = mag.kthvalue(n - k + 1).values  # the k-th largest magnitude
    if threshold == 0:
        return None  # every nonzero entry is kept; which zeros are "kept" changes nothing
    return float(threshold), k - int((mag > threshold).sum())


def ties_trim(tau: torch.Tensor, density: float, cut: tuple[float, int] | None = ...) -> torch.Tensor:
    """TIES' trim: keep exactly k = ties_keep_count(numel, density) entries of largest |τ|, zero the rest.

    Ties at the threshold go to the lowest flat indices, so the result depends on nothing but τ (torch.topk
    does not say which of equal values it returns). `cut` (from ties_cut on the same τ) saves finding the
    threshold again in a second pass. Returns τ itself when nothing is zeroed."""
    if cut is ...:
        cut = ties_cut(tau, density)
    if cut is None:
        return tau
    threshold, ties = cut
    mag = tau.abs().reshape(-1)
    keep = mag > threshold
    at = mag == threshold
    if int(at.sum()) > ties:  # more entries at the threshold than places left: the lowest indices win
        at &= at.cumsum(0) <= ties
    keep |= at
    return torch.where(keep.view(tau.shape), tau, torch.zeros((), dtype=tau.dtype))


def ties_merge(deltas: Callable[[], Iterable[torch.Tensor]]) -> tuple[torch.Tensor, int, int]:
    """TIES' elect and disjoint mean over sparse task vectors, in two passes; memory flat in their number.

    `deltas()` returns a fresh iterator over the same (trimmed or dropped) task vectors each time; they are
    consumed (overwritten), so it must make them afresh.
    Pass 1 elects the sign of each entry: sign(Σᵢ δᵢ), the summed mass (Yadav et al. 2023, §3); an exact
    zero sum elects no sign, and the entry keeps the base (mergekit elects + there, TIES' reference code the
    majority of the other entries' elected signs; no sign is symmetric under negating every δ).
    Pass 2 averages, per entry, the nonzero δᵢ whose sign agrees: Σ agreeing / their count, 0 where none agrees.
    Returns (merged, nonzero entries kept over all δᵢ, those of them dropped by the sign election)."""
    total = None
    for d in deltas():
        total = d if total is None else total.add_(d)
    if total is None:
        raise ValueError("TIES needs at least one task vector")
    sign = torch.sign(total).to(torch.int8)
    del total
    agreeing_mass = None  # Σ |δᵢ| over agreeing entries: same roundings as summing the signed values
    count = torch.zeros(sign.shape, dtype=torch.int32)
    kept = 0
    for d in deltas():
        kept += int(torch.count_nonzero(d))
        signed = d.mul_(sign)  # |δ| where it agrees with the elected sign, ≤ 0 (or NaN) elsewhere
        agree = signed > 0
        count.add_(agree)
        signed.clamp_min_(0)
        agreeing_mass = signed if agreeing_mass is None else agreeing_mass.add_(signed)
    agreed = int(count.sum())
    merged = agreeing_mass.div_(count.clamp_min_(1)).mul_(sign)
    return merged, kept, kept - agreed


def dare_generator(seed: int, key: str, index: int) -> torch.Generator:
    """The random stream of one ingredient's tensor: seeded by sha256 of (seed, key, ingredient index), so a
    mask depends neither on the other ingredients nor on the order tensors are mixed in (nor on PYTHONHASHSEED)."""
    digest = hashlib.sha256(f"ladle-dare\0{seed}\0{key}\0{index}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def dare_keep_mask(shape: torch.Size | Sequence[int], p: float, generator: torch.Generator) -> torch.Tensor:
    """Which entries DARE keeps: each independently with probability 1 − p (u ≥ p, u uniform float32 in [0, 1)).

    Drawn in float32 whatever the tensors' dtype, so the mask is the same for every accumulator."""
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32) >= p


def dare_drop(tau: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024): drop each entry of τ with probability p, rescale the rest by 1/(1 − p), which keeps
    E[result] = τ. p = 0 returns τ itself, untouched (nothing is drawn)."""
    if p == 0:
        return tau
    keep = dare_keep_mask(tau.shape, p, generator)
    return torch.where(keep, tau, torch.zeros((), dtype=tau.dtype)).div_(1.0 - p)


SLERP_PARALLEL = 0.9995  # |cos| above this: the angle is too small for sin θ to be trusted; interpolate linearly


def slerp(a: torch.Tensor, b: torch.Tensor, t: float,
          accumulate: torch.dtype = torch.float32) -> tuple[torch.Tensor, float | None, bool]:
    """Spherical interpolation of two tensors, flattened: the angle θ between a/‖a‖ and b/‖b‖, then
    sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b on the originals (Shoemake 1985; mergekit's `slerp`).

    Falls back to (1−t)·a + t·b when |cos θ| > SLERP_PARALLEL or either norm is zero.
    Returns (result in the accumulator dtype, cos θ or None if a norm is zero, whether it fell back)."""
    dtype = accumulator_dtype(torch.promote_types(a.dtype, b.dtype), accumulate)
    a, b = a.to(dtype), b.to(dtype)
    na = math.sqrt(float(torch.sum(a * a, dtype=torch.float64)))
    nb = math.sqrt(float(torch.sum(b * b, dtype=torch.float64)))
    cos = None
    if na > 0 and nb > 0:
        cos = min(max(float(torch.sum(a * b, dtype=torch.float64)) / (na * nb), -1.0), 1.0)
    if cos is None or abs(cos) > SLERP_PARALLEL:
        return a * (1.0 - t) + b * t, cos, True
    theta = math.acos(cos)
    s = math.sin(theta)
    return a * (math.sin((1.0 - t) * theta) / s) + b * (math.sin(t * theta) / s), cos, False
