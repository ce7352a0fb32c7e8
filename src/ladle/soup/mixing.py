"""The tensor maths of souping: small pure functions on numpy arrays, no I/O, no model objects.

Every function takes arrays one at a time from an iterable, so a caller that reads lazily keeps one accumulator
and one input array in memory, whatever the number of ingredients. numpy, not torch: a soup of safetensors files
is cooked without importing torch (bf16 comes from ml_dtypes). The results are bit for bit those of torch's
float32 kernels (tested): its `add_(x, alpha=w)` is a fused multiply-add, reproduced by `add_scaled_`.
The functions also take torch tensors (CPU, sharing memory) and then return tensors.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ladle.io.dtypes import is_tensor, numpy_dtype, to_numpy, to_torch

BLOCK = 1 << 18  # elements: float64 scratch of 2 MiB, reused (smaller blocks make threads queue for the GIL)


def torch_aware(fn):
    """Let a function on numpy arrays take torch tensors (alone, in lists, or from a lazy iterable): they go in as
    arrays sharing their memory, and arrays come back as tensors when a tensor went in."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        seen = []

        def arrays(value):
            if is_tensor(value):
                seen.append(True)
                return to_numpy(value)
            if isinstance(value, (list, tuple)):
                return type(value)(arrays(v) for v in value)
            if hasattr(value, "__next__"):  # an iterator: converted lazily, one tensor at a time
                return (arrays(v) for v in value)
            return value

        out = fn(*(arrays(a) for a in args), **{k: arrays(v) for k, v in kwargs.items()})
        if not seen:
            return out
        if isinstance(out, tuple):
            return tuple(to_torch(o) if isinstance(o, np.ndarray) else o for o in out)
        return to_torch(out) if isinstance(out, np.ndarray) else out

    return wrapper


def accumulator_dtype(input_dtype, accumulate=np.float32) -> np.dtype:
    """The requested accumulator (float32 or float64), widened to float64 for float64 inputs (numpy or torch
    dtypes in, a numpy dtype out)."""
    if numpy_dtype(input_dtype) == np.float64 or numpy_dtype(accumulate) == np.float64:
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1)


def add_scaled_(acc: np.ndarray, x: np.ndarray, w: float = 1.0) -> np.ndarray:
    """acc += w·x in place, x of any float dtype (bf16, fp16 …), converted block by block through small buffers.

    Rounded once, as torch's `acc.add_(x, alpha=w)` is (a fused multiply-add). For a float32 accumulator: when
    w = ±2⁻ᵏ (uniform soups of 2ᵏ ingredients, sums) w·x is exact in float32 unless it falls below the normal
    range, so one float32 multiply and add give the fused result (blocks holding such tiny values take the general
    way); otherwise w·x + acc is formed in float64, where the product of two float32 values is exact, and rounded
    once. A float64 accumulator rounds the product and the sum separately. Large arrays are split between threads
    (numpy lets go of the GIL), each with its own buffers."""
    a, b = _flat(acc), _flat(x)
    if a.dtype == np.float64:
        kernel, args = _fused_blocks, (np.float64(w),)
    else:
        w32 = np.float32(w)
        mantissa, exponent = math.frexp(float(w32))
        if abs(mantissa) == 0.5 and exponent <= 1:  # w = ±2⁻ᵏ, k = 1 − exponent ≥ 0
            k = 1 - exponent
            # |x| below 2^(k−126) (bits < (k+1)·2²³, zero aside) may lose bits in w·x; w = ±1 loses none
            kernel, args = _power_of_two_blocks, (w32, np.uint32((k + 1) << 23) if k else np.uint32(0))
        else:
            kernel, args = _fused_blocks, (np.float64(w32),)  # torch rounds alpha to the tensor's dtype
    in_parallel(kernel, a, b, *args)
    return acc


def in_parallel(kernel, out: np.ndarray, x: np.ndarray, *args) -> None:
    """kernel(out, x, *args) on flat arrays, split into one contiguous range per thread when they are large
    (numpy lets go of the GIL, so the ranges run at once)."""
    if out.size < PARALLEL_MIN or THREADS == 1:
        kernel(out, x, *args)
        return
    step = -(-out.size // THREADS // BLOCK) * BLOCK
    jobs = [_pool().submit(kernel, out[i : i + step], x[i : i + step], *args) for i in range(0, out.size, step)]
    for job in jobs:
        job.result()


THREADS = min(4, os.cpu_count() or 1)
PARALLEL_MIN = 1 << 20  # elements: below this, one thread (starting others costs more than it saves)
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="ladle-mix")
    return _POOL


def _forget_pool() -> None:
    global _POOL
    _POOL = None  # a forked child has none of its parent's threads: it starts its own pool when needed


os.register_at_fork(after_in_child=_forget_pool)


def _fused_blocks(a: np.ndarray, b: np.ndarray, w64: np.float64) -> None:
    """a += w·b with one rounding: product and sum in float64 buffers, then back to a's dtype."""
    product, total = np.empty(min(BLOCK, a.size)), np.empty(min(BLOCK, a.size))
    for i in range(0, a.size, BLOCK):
        n = min(BLOCK, a.size - i)
        p, t = product[:n], total[:n]
        np.copyto(p, b[i : i + n])
        np.copyto(t, a[i : i + n])
        p *= w64
        p += t
        np.copyto(a[i : i + n], p, casting="same_kind")


def _power_of_two_blocks(a: np.ndarray, b: np.ndarray, w32: np.float32, tiny: np.uint32) -> None:
    """a += w·b in float32 for w = ±2⁻ᵏ: exact products, so one rounding; blocks with |b| < 2^(k−126) (`tiny`
    as float32 bits) go through the float64 way."""
    product, bits = np.empty(min(BLOCK, a.size), np.float32), np.empty(min(BLOCK, a.size), np.uint32)
    for i in range(0, a.size, BLOCK):
        n = min(BLOCK, a.size - i)
        p = product[:n]
        np.copyto(p, b[i : i + n], casting="unsafe")  # bf16 and fp16 are exact in float32
        if tiny:
            u = np.bitwise_and(p.view(np.uint32), 0x7FFFFFFF, out=bits[:n])
            u -= np.uint32(1)  # zero wraps to the largest value: zeros are exact
            if u.min() < tiny - np.uint32(1):
                _fused_blocks(a[i : i + n], b[i : i + n], np.float64(w32))
                continue
        p *= w32
        a[i : i + n] += p


def scale_(acc: np.ndarray, w: float) -> np.ndarray:
    """acc *= w in place, w rounded to acc's dtype first (as torch's `mul_` with a Python scalar)."""
    return np.multiply(acc, acc.dtype.type(w), out=acc)


def converted(x: np.ndarray, dtype, w: float = 1.0) -> np.ndarray:
    """A fresh copy of w·x in `dtype`, rounded once (as torch's `x.to(dtype).mul_(w)`; x's memory is never
    written); a narrower dtype is rounded to nearest even, as torch's `.to`."""
    dtype = np.dtype(dtype)
    out = np.empty(x.shape, dtype)
    in_parallel(_scaled_copy, _flat(out), _flat(x), dtype.type(w))
    return out


def _scaled_copy(out: np.ndarray, x: np.ndarray, w) -> None:
    if w == 1:
        np.copyto(out, x, casting="unsafe")
    else:
        np.multiply(x, w, out=out, dtype=out.dtype)


@torch_aware
def weighted_sum(tensors: Iterable[np.ndarray], weights: Sequence[float], accumulate=np.float32) -> np.ndarray:
    """Σ wᵢ·xᵢ in the accumulator dtype, reading one xᵢ at a time. Zero weights still consume their array."""
    acc = None
    for x, w in zip(tensors, weights, strict=True):
        if acc is None:
            acc = converted(x, accumulator_dtype(x.dtype, accumulate), w)
        else:
            add_scaled_(acc, x, w)
    if acc is None:
        raise ValueError("weighted_sum needs at least one tensor")
    return acc


def sum_of_squares(x: np.ndarray) -> float:
    """Σ x² in float64, through cache-sized blocks (no float64 copy of x)."""
    return _dot(x, x)


def normalize_weights(weights: Sequence[float]) -> list[float]:
    """Scale non-negative weights to sum to one."""
    total = math.fsum(weights)
    if total <= 0:
        raise ValueError("weights sum to zero")
    return [w / total for w in weights]


def interpolation_weights(alpha: float, n_finetuned: int = 1) -> list[float]:
    """WiSE-FT: θ = (1−α)·θ_base + α·mean(θ_finetuned). Returned as [base, ft₁, …, ftₙ]."""
    return [1.0 - alpha] + [alpha / n_finetuned] * n_finetuned


@torch_aware
def task_vector(finetuned: np.ndarray, base: np.ndarray, accumulate=np.float32) -> np.ndarray:
    """θ_ft − θ_base in the accumulator dtype (a fresh array)."""
    dtype = accumulator_dtype(finetuned.dtype, accumulate)
    out = converted(finetuned, dtype)
    out -= base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
    return out


def model_stock_ratio(cos: float, k: int) -> float:
    """Model Stock's interpolation ratio t = k·cosθ / (1 + (k−1)·cosθ) (Jang et al. 2024, eq. 5).

    cosθ is clamped to [0, 1]: the paper's geometry assumes fine-tuned weights on a shell around
    a centre, so a negative angle means that assumption failed and the base is kept (t = 0).
    """
    if k < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    c = min(max(cos, 0.0), 1.0)
    return k * c / (1.0 + (k - 1) * c)


@torch_aware
def model_stock_mix(tensors: Iterable[np.ndarray], base: np.ndarray,
                    accumulate=np.float32) -> tuple[np.ndarray, float, float]:
    """Model Stock for one tensor, in one pass: returns (merged, t, mean pairwise cosθ of task vectors).

    The mean pairwise cosine of k task vectors dᵢ is (‖Σ uᵢ‖² − Σ‖uᵢ‖²) / (k(k−1)) with uᵢ = dᵢ/‖dᵢ‖,
    so it needs one running sum of unit vectors, not all pairs. A zero task vector has cosine 0 to all.
    """
    base_acc = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
    total = None
    unit_sum = np.zeros(base_acc.shape, dtype=base_acc.dtype)
    k = 0
    nonzero = 0
    for x in tensors:
        k += 1
        d = task_vector(x, base_acc, accumulate)
        norm = math.sqrt(sum_of_squares(d))
        if norm > 0:
            nonzero += 1
            add_scaled_(unit_sum, d, 1.0 / norm)
        del d
        if total is None:
            total = converted(x, base_acc.dtype)
        else:
            add_scaled_(total, x)
    if k < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    cos = (sum_of_squares(unit_sum) - nonzero) / (k * (k - 1))
    t = model_stock_ratio(cos, k)
    merged = add_scaled_(scale_(total, t / k), base_acc, 1.0 - t)
    return merged, t, cos


@torch_aware
def pairwise_cosine(gram: np.ndarray) -> np.ndarray:
    """Cosine similarities from a Gram matrix of vectors; 0 where a vector is zero."""
    norms = np.sqrt(np.maximum(np.diagonal(gram), 0))
    denom = np.outer(norms, norms)
    return np.where(denom > 0, gram / np.maximum(denom, 1e-300), 0.0)


# ---------------------------------------------------------------- task vectors: task arithmetic, TIES, DARE, SLERP


def task_vectors(tensors: Iterable[np.ndarray], base: np.ndarray, accumulate=np.float32) -> Iterator[np.ndarray]:
    """τᵢ = θᵢ − θ_base for each θᵢ, lazily: a fresh array each, in the accumulator dtype. θᵢ is let go
    before τᵢ is handed out, so a lazy reader holds one ingredient array at a time."""
    for x in tensors:
        tau = task_vector(x, base, accumulate)
        del x
        yield tau


@torch_aware
def task_arithmetic(base: np.ndarray, deltas: Iterable[np.ndarray], lambda_: float,
                    accumulate=np.float32) -> np.ndarray:
    """θ_base + λ·Σ δᵢ (Ilharco et al. 2023), summing the δᵢ one at a time; consumes (overwrites) the first δ.

    Summing task vectors, not λ·θᵢ with a base weight 1 − nλ: the weights' cancellation would cost
    n roundings of |θ| instead of roundings of the (much smaller) |τ|."""
    total = _sum_into_first(deltas)
    if total is None:
        raise ValueError("task arithmetic needs at least one task vector")
    scale_(total, lambda_)
    total += base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
    return total


def ties_keep_count(numel: int, density: float) -> int:
    """k = ⌈density·numel⌉ entries kept (at least one); the product is rounded to 9 decimals first, so that
    0.2·10 keeps 2 entries, not 3 (0.2 is slightly more than 1/5 in binary)."""
    return min(numel, max(1, math.ceil(round(density * numel, 9))))


@torch_aware
def ties_cut(tau: np.ndarray, density: float) -> tuple[float, int] | None:
    """Where TIES' trim cuts τ: (t, m) keeps the entries with |τ| > t and the first m (in flat, row-major order)
    with |τ| = t, k = ties_keep_count(numel, density) in all; None when it keeps every nonzero entry."""
    n = tau.size
    k = ties_keep_count(n, density)
    if k >= n:
        return None
    mag = np.abs(_flat(tau))
    threshold = np.partition(mag, n - k)[n - k]  # the k-th largest magnitude
    if threshold == 0:
        return None  # every nonzero entry is kept; which zeros are "kept" changes nothing
    return float(threshold), k - int(np.count_nonzero(mag > threshold))


@torch_aware
def ties_trim(tau: np.ndarray, density: float, cut: tuple[float, int] | None = ...) -> np.ndarray:
    """TIES' trim: keep exactly k = ties_keep_count(numel, density) entries of largest |τ|, zero the rest.

    Ties at the threshold go to the lowest flat indices, so the result depends on nothing but τ (a top-k
    does not say which of equal values it returns). `cut` (from ties_cut on the same τ) saves finding the
    threshold again in a second pass. Returns τ itself when nothing is zeroed."""
    if cut is ...:
        cut = ties_cut(tau, density)
    if cut is None:
        return tau
    threshold, ties = cut
    mag = np.abs(_flat(tau))
    keep = mag > threshold
    at = mag == threshold
    if int(np.count_nonzero(at)) > ties:  # more entries at the threshold than places left: the lowest indices win
        at &= np.cumsum(at) <= ties
    keep |= at
    return np.where(keep.reshape(tau.shape), tau, tau.dtype.type(0))


def ties_merge(deltas: Callable[[], Iterable[np.ndarray]]) -> tuple[np.ndarray, int, int]:
    """TIES' elect and disjoint mean over sparse task vectors, in two passes; memory flat in their number.

    `deltas()` returns a fresh iterator over the same (trimmed or dropped) task vectors each time; they are
    consumed (overwritten), so it must make them afresh.
    Pass 1 elects the sign of each entry: sign(Σᵢ δᵢ), the summed mass (Yadav et al. 2023, §3); an exact
    zero sum elects no sign, and the entry keeps the base (mergekit elects + there, TIES' reference code the
    majority of the other entries' elected signs; no sign is symmetric under negating every δ).
    Pass 2 averages, per entry, the nonzero δᵢ whose sign agrees: Σ agreeing / their count, 0 where none agrees.
    Returns (merged, nonzero entries kept over all δᵢ, those of them dropped by the sign election)."""
    total = _sum_into_first(deltas())
    if total is None:
        raise ValueError("TIES needs at least one task vector")
    sign = np.sign(total).astype(np.int8)
    del total
    agreeing_mass = None  # Σ |δᵢ| over agreeing entries: same roundings as summing the signed values
    count = np.zeros(sign.shape, dtype=np.int32)
    kept = 0
    for d in deltas():
        kept += int(np.count_nonzero(d))
        signed = np.multiply(d, sign, out=d)  # |δ| where it agrees with the elected sign, ≤ 0 (or NaN) elsewhere
        count += signed > 0
        np.maximum(signed, 0, out=signed)
        if agreeing_mass is None:
            agreeing_mass = signed
        else:
            agreeing_mass += signed
    agreed = int(count.sum())
    merged = np.divide(agreeing_mass, np.maximum(count, 1).astype(agreeing_mass.dtype), out=agreeing_mass)
    return np.multiply(merged, sign, out=merged), kept, kept - agreed


def merge_deltas(base: np.ndarray, deltas: Callable[[], Iterable[np.ndarray]], lambda_: float, elect: bool,
                 accumulate=np.float32) -> tuple[np.ndarray, dict | None]:
    """θ_base + λ·Σ δᵢ, or with `elect` θ_base + λ·(TIES' sign election and disjoint mean of the δᵢ) and its
    counts ({"kept", "sign_conflicts"}): how TIES, DARE, Breadcrumbs and DELLA end once their δᵢ are sparse.
    `deltas()` gives a fresh pass each time (TIES reads them twice)."""
    if not elect:
        return task_arithmetic(base, deltas(), lambda_, accumulate), None
    merged, kept, conflicts = ties_merge(deltas)
    scale_(merged, lambda_)
    merged += base
    return merged, {"kept": kept, "sign_conflicts": conflicts}


def dare_generator(seed: int, key: str, index: int) -> np.random.RandomState:
    """The random stream of one ingredient's tensor: seeded by sha256 of (seed, key, ingredient index), so a
    mask depends neither on the other ingredients nor on the order tensors are mixed in (nor on PYTHONHASHSEED).

    A Mersenne Twister seeded as torch's CPU generator is (`manual_seed` keeps the low 32 bits), so the masks are
    those of `torch.rand(shape, generator=torch.Generator().manual_seed(s))` (tested)."""
    digest = hashlib.sha256(f"ladle-dare\0{seed}\0{key}\0{index}".encode()).digest()
    return np.random.RandomState((int.from_bytes(digest[:8], "little") >> 1) & 0xFFFFFFFF)


def dare_keep_mask(shape: Sequence[int], p: float, generator: np.random.RandomState) -> np.ndarray:
    """Which entries DARE keeps: each independently with probability 1 − p (u ≥ p, u uniform float32 in [0, 1)).

    u is drawn as torch.rand draws float32 on the CPU: the low 24 bits of one 32-bit draw, over 2²⁴. Drawn in
    float32 whatever the tensors' dtype, so the mask is the same for every accumulator."""
    shape = tuple(shape)
    bits = generator.randint(0, 1 << 32, size=math.prod(shape), dtype=np.uint32)
    u = (bits & 0xFFFFFF).astype(np.float32) * np.float32(2.0**-24)
    return (u >= np.float32(p)).reshape(shape)


@torch_aware
def dare_drop(tau: np.ndarray, p: float, generator: np.random.RandomState) -> np.ndarray:
    """DARE (Yu et al. 2024): drop each entry of τ with probability p, rescale the rest by 1/(1 − p), which keeps
    E[result] = τ. p = 0 returns τ itself, untouched (nothing is drawn)."""
    if p == 0:
        return tau
    keep = dare_keep_mask(tau.shape, p, generator)
    out = np.where(keep, tau, tau.dtype.type(0))
    return np.divide(out, out.dtype.type(1.0 - p), out=out)


def magnitude_order(tau: np.ndarray) -> np.ndarray:
    """Flat indices of τ from the largest |τ| to the smallest, equal magnitudes by increasing index."""
    return np.argsort(-np.abs(_flat(tau)), kind="stable")


def fraction_count(fraction: float, n: int) -> int:
    """round(fraction·n) entries (half to even), the product rounded to 9 decimals first (0.2·10 is 2)."""
    return int(round(round(fraction * n, 9)))


@torch_aware
def breadcrumbs_mask(tau: np.ndarray, gamma: float, density: float) -> np.ndarray:
    """Model Breadcrumbs (Davari & Belilovsky 2023): of τ sorted by |τ|, drop the round(γ·n) largest entries
    (outliers) and keep the next round(density·n); zero the rest (equal magnitudes ordered by index)."""
    n = tau.size
    top, keep = fraction_count(gamma, n), fraction_count(density, n)
    out = np.zeros_like(tau)
    chosen = magnitude_order(tau)[top : top + keep]
    _flat(out)[chosen] = _flat(tau)[chosen]
    return out


def della_probabilities(n: int, density: float, epsilon: float) -> np.ndarray:
    """MAGPRUNE's drop probability of each magnitude rank (ascending |τ|, float64): linear from 1 − density + ε
    (the smallest entry) to 1 − density − ε (the largest); 1 − density for a single entry."""
    if n == 1:
        return np.array([1.0 - density])
    return (1.0 - density + epsilon) - 2.0 * epsilon * np.arange(n, dtype=np.float64) / (n - 1)


@torch_aware
def della_drop(tau: np.ndarray, density: float, epsilon: float, generator: np.random.RandomState) -> np.ndarray:
    """DELLA's MAGPRUNE (Deep et al. 2024): drop each entry with the probability of its magnitude rank
    (della_probabilities; equal magnitudes ranked by index) and rescale each kept one by 1/(1 − pᵢ), so
    E[result] = τ. The uniform draws are DARE's (dare_keep_mask's stream), compared with each entry's pᵢ."""
    flat = _flat(tau)
    n = flat.size
    bits = generator.randint(0, 1 << 32, size=n, dtype=np.uint32)
    u = (bits & 0xFFFFFF).astype(np.float64) * 2.0**-24
    p = np.empty(n, dtype=np.float64)
    p[magnitude_order(tau)[::-1]] = della_probabilities(n, density, epsilon)  # rank 0: the smallest |τ|
    keep = u >= p
    out = np.zeros_like(flat)
    out[keep] = (flat[keep].astype(np.float64) / (1.0 - p[keep])).astype(flat.dtype)
    return out.reshape(tau.shape)


KARCHER_TOLERANCE = 1e-7  # the norm of the mean tangent vector at which the iteration stops
KARCHER_ITERATIONS = 100


def karcher_mean(tensors: Callable[[], Iterable[np.ndarray]], weights: Sequence[float], accumulate=np.float32,
                 tolerance: float = KARCHER_TOLERANCE, max_iterations: int = KARCHER_ITERATIONS
                 ) -> tuple[np.ndarray, int, bool]:
    """The weighted Karcher (Fréchet) mean of the tensors' directions on the unit sphere, scaled by the weighted
    mean of their norms (as mergekit's `karcher`). Fixed-point iteration: m ← exp_m(Σ wᵢ log_m(uᵢ) / Σ wᵢ) until
    the mean tangent's norm is below `tolerance`. `tensors()` gives a fresh pass over the tensors each time (one
    pass per iteration: memory flat in their number). Zero tensors have no direction: they count in the mean
    norm only. Returns (mean, iterations, converged)."""
    weights = [float(w) for w in weights]
    norms, mean, out_dtype = [], None, None
    for x, w in zip(tensors(), weights):  # pass 1: norms, and the start: the normalised weighted mean direction
        out_dtype = accumulator_dtype(x.dtype, accumulate)
        x = x.astype(out_dtype, copy=False)
        norm = math.sqrt(sum_of_squares(x))
        norms.append(norm)
        if mean is None:
            mean = np.zeros(x.shape, dtype=np.float64)
        if norm > 0:
            mean += (w / norm) * x.astype(np.float64)
    total_w = sum(w for w, r in zip(weights, norms) if r > 0)
    radius = sum(w * r for w, r in zip(weights, norms)) / sum(weights)
    start = math.sqrt(float(np.dot(_flat(mean), _flat(mean))))
    if total_w == 0 or start == 0:  # no direction (or exactly opposite ones): the norm-weighted sum is all there is
        return mean.astype(out_dtype), 0, True
    m = mean / start
    iterations, converged = 0, False
    for iterations in range(1, max_iterations + 1):
        tangent = np.zeros(m.shape, dtype=np.float64)
        for x, w, r in zip(tensors(), weights, norms):
            if r == 0:
                continue
            u = x.astype(np.float64) / r
            cos = min(max(float(np.dot(_flat(u), _flat(m))), -1.0), 1.0)
            theta = math.acos(cos)
            log = u - cos * m  # the direction of u in m's tangent space, length sin θ
            if theta > 1e-12:
                log *= theta / math.sin(theta)
            tangent += (w / total_w) * log
        step = math.sqrt(float(np.dot(_flat(tangent), _flat(tangent))))
        if step < tolerance:
            converged = True
            break
        m = math.cos(step) * m + (math.sin(step) / step) * tangent
        m /= math.sqrt(float(np.dot(_flat(m), _flat(m))))
    return (m * radius).astype(out_dtype), iterations, converged


SLERP_PARALLEL = 0.9995  # |cos| above this: the angle is too small for sin θ to be trusted; interpolate linearly


@torch_aware
def slerp(a: np.ndarray, b: np.ndarray, t: float, accumulate=np.float32) -> tuple[np.ndarray, float | None, bool]:
    """Spherical interpolation of two tensors, flattened: the angle θ between a/‖a‖ and b/‖b‖, then
    sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b on the originals (Shoemake 1985; mergekit's `slerp`).

    Falls back to (1−t)·a + t·b when |cos θ| > SLERP_PARALLEL or either norm is zero.
    Returns (result in the accumulator dtype, cos θ or None if a norm is zero, whether it fell back)."""
    dtype = accumulator_dtype(np.float64 if np.float64 in (a.dtype, b.dtype) else np.float32, accumulate)
    a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    na, nb = math.sqrt(sum_of_squares(a)), math.sqrt(sum_of_squares(b))
    cos = None
    if na > 0 and nb > 0:
        cos = min(max(_dot(a, b) / (na * nb), -1.0), 1.0)
    if cos is None or abs(cos) > SLERP_PARALLEL:
        wa, wb = 1.0 - t, t
    else:
        theta = math.acos(cos)
        s = math.sin(theta)
        wa, wb = math.sin((1.0 - t) * theta) / s, math.sin(t * theta) / s
    out = a * dtype.type(wa)
    out += b * dtype.type(wb)
    return out, cos, cos is None or abs(cos) > SLERP_PARALLEL


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Σ a·b in float64, through cache-sized blocks (each block converted once when a is b)."""
    total = 0.0
    fa, fb = _flat(a), _flat(b)
    for i in range(0, fa.size, BLOCK):
        pa = fa[i : i + BLOCK].astype(np.float64)
        total += float(np.dot(pa, pa if b is a else fb[i : i + BLOCK].astype(np.float64)))
    return total


def _sum_into_first(arrays: Iterable[np.ndarray]) -> np.ndarray | None:
    """Σ arrays, added into the first one (consumed); None when there is none."""
    total = None
    for d in arrays:
        if total is None:
            total = d
        else:
            total += d
    return total
