"""The streaming core runs on numpy: bit for bit what torch's kernels gave, and no torch import where no model runs.

The references below are torch written the way ladle mixed before its core moved to numpy (float32 accumulator,
`add_(x, alpha=w)`, `.to(dtype)` at the end), so any change of a single bit in a soup shows here.
"""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import ladle
from ladle.io.dtypes import dtype_name, to_numpy, to_torch
from ladle.soup import mixing

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(), (7,), (33, 65), (3, 70001)]  # a scalar, odd sizes, one larger than the float64 scratch block


def states(n, dtype, seed, keys=("a", "b", "c")):
    g = torch.Generator().manual_seed(seed)
    return [{k: (torch.randn(SHAPES[i], generator=g) * (1 + i)).to(dtype) for i, k in enumerate(keys)}
            | {"d": torch.randn(SHAPES[3], generator=g).to(dtype)} for _ in range(n)]


def torch_weighted(xs, weights, out_dtype):
    acc = xs[0].to(torch.float32, copy=True).mul_(weights[0])
    for x, w in zip(xs[1:], weights[1:]):
        acc.add_(x.to(torch.float32), alpha=w)
    return acc.to(out_dtype)


def torch_task_arithmetic(xs, base, lambda_):
    b = base.to(torch.float32)
    total = None
    for x in xs:
        d = x.to(torch.float32) - b
        total = d if total is None else total.add_(d)
    return total.mul_(lambda_).add_(b).to(base.dtype)


def torch_dare_masks(key, n, p, seed, shape):
    masks = []
    for i in range(n):
        digest = hashlib.sha256(f"ladle-dare\0{seed}\0{key}\0{i}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        masks.append(torch.rand(shape, generator=g, dtype=torch.float32) >= p)
    return masks


def torch_dare(xs, base, key, p, lambda_, seed):
    b = base.to(torch.float32)
    total = None
    for x, keep in zip(xs, torch_dare_masks(key, len(xs), p, seed, base.shape)):
        d = torch.where(keep, x.to(torch.float32) - b, torch.zeros(())).div_(1.0 - p)
        total = d if total is None else total.add_(d)
    return total.mul_(lambda_).add_(b).to(base.dtype)


def torch_ties(xs, base, density, lambda_):
    b = base.to(torch.float32)
    taus = []
    for x in xs:
        tau = x.to(torch.float32) - b
        k = mixing.ties_keep_count(tau.numel(), density)
        mag = tau.abs().reshape(-1)
        if k < tau.numel() and (threshold := mag.kthvalue(tau.numel() - k + 1).values) > 0:
            keep = mag > threshold
            at = mag == threshold
            at &= at.cumsum(0) <= k - int(keep.sum())
            tau = torch.where((keep | at).view(tau.shape), tau, torch.zeros(()))
        taus.append(tau)
    sign = torch.sign(sum(t.clone() for t in taus)).to(torch.int8)
    count, mass = torch.zeros(sign.shape, dtype=torch.int32), torch.zeros(sign.shape)
    for t in taus:
        signed = t.clone().mul_(sign)
        count.add_(signed > 0)
        mass.add_(signed.clamp_min_(0))
    merged = mass.div_(count.clamp_min(1)).mul_(sign)
    return merged.mul_(lambda_).add_(b).to(base.dtype)


def cooked(recipe, ingredients, **kw):
    return ladle.cook(recipe, ingredients, **kw).state_dict


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_weighted_sums_are_bit_for_bit_torchs(dtype):
    xs = states(4, dtype, seed=1)
    cases = [("uniform", {}, [0.25] * 4), ("weighted", {"weights": [0.1, 2.0, 0.7, 1.3]}, None)]
    for recipe, params, weights in cases:
        weights = weights or mixing.normalize_weights(params["weights"])
        soup = cooked(recipe, xs, **params)
        for k in xs[0]:
            expected = torch_weighted([s[k] for s in xs], weights, dtype)
            assert soup[k].dtype == dtype and torch.equal(soup[k], expected), (recipe, k)
    soup = cooked("interpolate", xs[1:2], base=xs[0], alpha=0.3)
    for k in xs[0]:
        assert torch.equal(soup[k], torch_weighted([xs[0][k], xs[1][k]], [0.7, 0.3], dtype)), k


@pytest.mark.parametrize("out", ["bf16", "fp16", "fp32"])
def test_output_dtype_rounds_to_nearest_even_like_torch(out):
    xs = states(3, torch.float32, seed=2)
    soup = cooked("uniform", xs, dtype=out)
    target = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[out]
    for k in xs[0]:
        assert torch.equal(soup[k], torch_weighted([s[k] for s in xs], [1 / 3] * 3, target)), k


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "bf16", "f16"])
def test_task_vector_recipes_are_bit_for_bit_torchs(dtype):
    *xs, base = states(4, dtype, seed=3)
    ta = cooked("task-arithmetic", xs, base=base, lambda_=0.4)
    dare = cooked("dare", xs, base=base, p=0.6, lambda_=0.7, seed=5)
    ties = cooked("ties", xs, base=base, density=0.3, lambda_=1.2)
    for k in base:
        parts = [s[k] for s in xs]
        assert torch.equal(ta[k], torch_task_arithmetic(parts, base[k], 0.4)), k
        assert torch.equal(dare[k], torch_dare(parts, base[k], k, 0.6, 0.7, 5)), k
        assert torch.equal(ties[k], torch_ties(parts, base[k], 0.3, 1.2)), k


def torch_model_stock(xs, base):
    b = base.to(torch.float32)
    unit_sum, total, nonzero = torch.zeros_like(b), None, 0
    for x in xs:
        d = x.to(torch.float32) - b
        norm = torch.linalg.vector_norm(d.double()).item()
        if norm > 0:
            nonzero += 1
            unit_sum.add_(d, alpha=1.0 / norm)
        total = x.to(torch.float32, copy=True) if total is None else total.add_(x)
    k = len(xs)
    cos = (torch.linalg.vector_norm(unit_sum.double()).item() ** 2 - nonzero) / (k * (k - 1))
    t = mixing.model_stock_ratio(cos, k)
    return total.mul_(t / k).add_(b, alpha=1.0 - t).to(base.dtype)


def torch_slerp(a, b, t):
    a, b = a.float(), b.float()
    na, nb = math.sqrt(float(torch.sum(a * a, dtype=torch.float64))), math.sqrt(float(torch.sum(b * b, dtype=torch.float64)))
    theta = math.acos(float(torch.sum(a * b, dtype=torch.float64)) / (na * nb))
    return a * (math.sin((1 - t) * theta) / math.sin(theta)) + b * (math.sin(t * theta) / math.sin(theta))


def within_one_step(got, expected):
    """Equal, or one float32 step apart: the angle's float64 reduction runs in another order than torch's."""
    step = torch.ldexp(torch.ones_like(expected), torch.frexp(expected.abs())[1] - 24)
    return bool(((got - expected).abs() <= step).all())


def test_model_stock_and_slerp_agree_with_torch_within_one_step():
    *xs, base = states(4, torch.float32, seed=4)
    soup = cooked("model-stock", xs, base=base)
    for k in base:
        expected = torch_model_stock([x[k] for x in xs], base[k])
        assert within_one_step(soup[k], expected), k
    for k in ("c", "d"):
        a, b = xs[0][k], xs[1][k]
        merged, cos, linear = mixing.slerp(a, b, 0.3)
        assert not linear and isinstance(merged, torch.Tensor) and within_one_step(merged, torch_slerp(a, b, 0.3))


def test_dare_masks_are_torchs_generator_bits():
    for seed, key, index in [(0, "w", 0), (7, "layer.weight", 3), (2**40, "x", 1)]:
        digest = hashlib.sha256(f"ladle-dare\0{seed}\0{key}\0{index}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        expected = torch.rand((301, 17), generator=g) >= 0.37
        assert np.array_equal(mixing.dare_keep_mask((301, 17), 0.37, mixing.dare_generator(seed, key, index)),
                              expected.numpy())


def test_add_scaled_is_torchs_fused_multiply_add():
    g = torch.Generator().manual_seed(5)
    acc, x = torch.randn(100_003, generator=g), torch.randn(100_003, generator=g)
    for w in (0.3, 1 / 3, -2.5, 1.0):
        expected = acc.clone().add_(x, alpha=w)
        got = mixing.add_scaled_(to_numpy(acc.clone()), to_numpy(x), w)
        assert np.array_equal(got, expected.numpy()), w
        two_roundings = to_numpy(acc) + np.float32(w) * to_numpy(x)
        if w not in (1.0,):
            assert not np.array_equal(two_roundings, expected.numpy())  # the test can tell the difference


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64, torch.int64, torch.bool, torch.float8_e4m3fn])
def test_tensors_and_arrays_share_memory_both_ways(dtype):
    t = torch.arange(12).reshape(3, 4).to(dtype)
    a = to_numpy(t)
    assert dtype_name(a.dtype) == dtype_name(dtype) and a.shape == (3, 4)
    back = to_torch(a)
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8) if dtype == torch.float8_e4m3fn else back,
                                               t.view(torch.uint8) if dtype == torch.float8_e4m3fn else t)
    assert back.data_ptr() == t.data_ptr()


def test_fixed_weight_commands_never_import_torch(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.safetensors"
        save_file({"w": rng.standard_normal((20, 30)).astype(np.float32), "steps": np.array([i], dtype=np.int64)}, path)
        paths.append(str(path))
    a, b, base = paths
    commands = [["recipes"], ["check", a, b], ["check", a, b, "--base", base]]
    for recipe, extra in [("uniform", []), ("weighted", ["--weights", "1,3"]), ("interpolate", ["--alpha", "0.3"]),
                          ("model-stock", ["--base", base]), ("task-arithmetic", ["--base", base]),
                          ("ties", ["--base", base]), ("dare", ["--base", base]), ("dare-ties", ["--base", base]),
                          ("slerp", [])]:
        ingredients = [base, a] if recipe == "interpolate" else [a, b]
        commands.append(["cook", recipe, *ingredients, *extra, "-o", str(tmp_path / f"{recipe}.safetensors")])
    commands.append(["cook", "uniform", a, b, "-o", str(tmp_path / "directory-soup")])  # sharded layout, model card
    script = ("import sys, ladle.cli\n"
              "rc = ladle.cli.main(sys.argv[1:])\n"
              "assert 'torch' not in sys.modules, 'torch was imported'\n"
              "sys.exit(rc)\n")
    for argv in commands:
        run = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (argv, run.stderr[-500:])
    assert (tmp_path / "ties.safetensors").exists() and (tmp_path / "directory-soup" / "README.md").exists()


@pytest.mark.parametrize("w", [1 / 16, -0.5, 1.0, 2.0, 0.3])
def test_power_of_two_weights_and_tiny_values_are_still_torchs_fused_result(w):
    """w = ±2⁻ᵏ takes a float32 way (exact products); values so small that w·x leaves the normal range (here in
    one block of two) must not: they go the float64 way, and every bit still matches torch."""
    g = torch.Generator().manual_seed(6)
    size = 2 * mixing.BLOCK + 7
    acc, x = torch.randn(size, generator=g), torch.randn(size, generator=g)
    x[mixing.BLOCK + 3 : mixing.BLOCK + 40] *= 2.0**-125  # near the bottom of float32: w·x subnormal
    acc[mixing.BLOCK + 3 : mixing.BLOCK + 40] *= 2.0**-127
    for dtype in (torch.float32, torch.bfloat16):
        xs = x.to(dtype)
        expected = acc.clone().add_(xs.float(), alpha=w)
        got = mixing.add_scaled_(to_numpy(acc.clone()), to_numpy(xs), w)
        assert np.array_equal(got.view(np.uint32), expected.numpy().view(np.uint32)), (w, dtype)
