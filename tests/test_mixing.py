"""The mixing maths: exact values on hand-made tensors, and the invariants as property tests."""

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ladle
from ladle.soup import mixing

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)


def t(*values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_weighted_sum_exact():
    out = mixing.weighted_sum([t(1.0, 2.0), t(3.0, 4.0)], [0.25, 0.75])
    assert torch.equal(out, t(2.5, 3.5))


def test_weighted_sum_consumes_one_tensor_at_a_time():
    seen = []

    def lazy():
        for i in range(3):
            seen.append(i)
            yield torch.full((2,), float(i))

    out = mixing.weighted_sum(lazy(), [1.0, 1.0, 1.0])
    assert seen == [0, 1, 2] and torch.equal(out, t(3.0, 3.0))


def test_weighted_sum_accumulates_bf16_in_float32():
    # 256 + 1 is not representable in bf16 (8 bits of mantissa): a bf16 accumulator would lose the ones.
    tensors = [t(256.0, dtype=torch.bfloat16)] + [t(1.0, dtype=torch.bfloat16)] * 8
    out = mixing.weighted_sum(tensors, [1.0] * 9)
    assert out.dtype == torch.float32 and out.item() == 264.0


def test_accumulator_widens_for_float64_inputs():
    assert mixing.accumulator_dtype(torch.float64, torch.float32) == np.float64
    assert mixing.accumulator_dtype(torch.bfloat16, torch.float32) == np.float32
    assert mixing.accumulator_dtype(torch.float16, torch.float64) == np.float64
    assert mixing.accumulator_dtype(ml_dtypes.bfloat16, np.float32) == np.float32


def test_weighted_sum_rejects_count_mismatch_and_empty():
    with pytest.raises(ValueError):
        mixing.weighted_sum([t(1.0)], [0.5, 0.5])
    with pytest.raises(ValueError):
        mixing.weighted_sum([], [])


def test_normalize_weights():
    assert mixing.normalize_weights([1, 1, 2]) == [0.25, 0.25, 0.5]
    with pytest.raises(ValueError):
        mixing.normalize_weights([0, 0])


def test_interpolation_weights():
    assert mixing.interpolation_weights(0.3) == [0.7, 0.3]
    assert mixing.interpolation_weights(0.5, 2) == [0.5, 0.25, 0.25]
    assert mixing.interpolation_weights(1.5) == [-0.5, 1.5]


@pytest.mark.parametrize("cos,k,expected", [(1.0, 2, 1.0), (0.0, 2, 0.0), (0.5, 2, 2 / 3), (0.5, 3, 0.75), (-0.3, 2, 0.0)])
def test_model_stock_ratio(cos, k, expected):
    assert mixing.model_stock_ratio(cos, k) == pytest.approx(expected)


def test_model_stock_mix_orthogonal_task_vectors_keep_the_base():
    base = t(1.0, 1.0)
    merged, ratio, cos = mixing.model_stock_mix([t(2.0, 1.0), t(1.0, 2.0)], base)
    assert cos == pytest.approx(0.0, abs=1e-12) and ratio == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(merged, base, atol=1e-6)


def test_model_stock_mix_parallel_task_vectors_give_the_mean():
    merged, ratio, cos = mixing.model_stock_mix([t(2.0, 2.0), t(3.0, 3.0)], t(1.0, 1.0))
    assert cos == pytest.approx(1.0) and ratio == pytest.approx(1.0)
    assert torch.allclose(merged, t(2.5, 2.5))


def test_model_stock_mix_matches_pairwise_cosines():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, generator=g)
    fts = [base + torch.randn(50, generator=g) + 0.8 for _ in range(4)]
    merged, ratio, cos = mixing.model_stock_mix(fts, base)
    d = [f - base for f in fts]
    pairs = [torch.nn.functional.cosine_similarity(d[i], d[j], dim=0).item() for i in range(4) for j in range(4) if i < j]
    assert cos == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    expected_t = 4 * cos / (1 + 3 * cos)
    assert ratio == pytest.approx(expected_t)
    assert torch.allclose(merged, expected_t * torch.stack(fts).mean(0) + (1 - expected_t) * base, atol=1e-6)


def test_pairwise_cosine_zero_vector():
    gram = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(mixing.pairwise_cosine(gram), torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))


# ---- invariants, as property tests ------------------------------------------------------------

shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple)


def random_state(seed: int, shape: tuple, dtype: torch.dtype, keys=("w", "b")) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype) for k in keys}


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), shape=shapes, dtype=st.sampled_from(FLOATS),
       accumulate=st.sampled_from(["float32", "float64"]))
def test_one_ingredient_at_weight_one_is_itself_bit_for_bit(seed, shape, dtype, accumulate):
    state = random_state(seed, shape, dtype)
    for recipe, params in [("uniform", {}), ("weighted", {"weights": [1.0]}), ("weighted", {"weights": [7.0]})]:
        soup = ladle.cook(recipe, [state], accumulate=accumulate, **params).state_dict
        for k in state:
            assert soup[k].dtype == dtype and torch.equal(soup[k], state[k]), (recipe, k)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), shape=shapes, n=st.integers(2, 7),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
def test_identical_ingredients_give_themselves_back(seed, shape, n, dtype):
    state = random_state(seed, shape, dtype)
    # 16-bit inputs: exact with the default float32 accumulator; float32 inputs: exact with float64.
    accumulate = "float64" if dtype == torch.float32 else "float32"
    soup = ladle.cook("uniform", [state] * n, accumulate=accumulate).state_dict
    for k in state:
        assert torch.equal(soup[k], state[k])


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), shape=shapes, n=st.integers(2, 7))
def test_identical_float32_ingredients_within_rounding_with_float32_accumulator(seed, shape, n):
    state = random_state(seed, shape, torch.float32)
    soup = ladle.cook("uniform", [state] * n).state_dict
    for k in state:
        assert torch.allclose(soup[k], state[k], rtol=(n + 1) * 2**-24, atol=0)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), shape=shapes, n=st.integers(2, 6), data=st.data(),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_ingredient_order_does_not_change_the_result(seed, shape, n, data, dtype):
    states = [random_state(seed + i, shape, dtype) for i in range(n)]
    weights = data.draw(st.lists(st.floats(0.01, 10), min_size=n, max_size=n))
    order = data.draw(st.permutations(range(n)))
    a = ladle.cook("weighted", states, weights=weights, accumulate="float64").state_dict
    b = ladle.cook("weighted", [states[i] for i in order], weights=[weights[i] for i in order], accumulate="float64").state_dict
    for k in a:
        assert torch.equal(a[k], b[k])
    # With the float32 accumulator the sum is rounded in another order: equal up to accumulator
    # rounding (n·2⁻²⁴ of Σ|wᵢxᵢ|) plus one ulp of the output dtype.
    c = ladle.cook("weighted", states, weights=weights).state_dict
    d = ladle.cook("weighted", [states[i] for i in order], weights=[weights[i] for i in order]).state_dict
    total = math.fsum(weights)
    bits = 8 if dtype == torch.bfloat16 else 24
    for k in c:
        magnitude = sum(s[k].double().abs() * (w / total) for s, w in zip(states, weights))
        bound = 2 * n * 2**-24 * magnitude + ulp(c[k].double().abs().maximum(d[k].double().abs()), bits)
        assert bool(((c[k].double() - d[k].double()).abs() <= bound).all())


def ulp(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Spacing of floating-point numbers with `bits` significant bits around x."""
    _, exponent = torch.frexp(x.abs().clamp_min(2.0**-126))
    return torch.ldexp(torch.ones_like(x), exponent - bits)


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), data=st.data())
def test_bf16_agrees_with_a_float64_reference_within_bf16_rounding(seed, n, data):
    states = [random_state(seed + i, (64,), torch.bfloat16) for i in range(n)]
    weights = data.draw(st.lists(st.floats(0.01, 10), min_size=n, max_size=n))
    soup = ladle.cook("weighted", states, weights=weights).state_dict
    total = math.fsum(weights)
    for k in soup:
        exact = sum(s[k].double() * (w / total) for s, w in zip(states, weights))
        assert soup[k].dtype == torch.bfloat16
        err = (soup[k].double() - exact).abs()
        # Round-to-nearest gives ≤ ½ ulp; float32 accumulation adds far less than another ½ ulp.
        assert bool((err <= ulp(exact, 8)).all()), float((err / ulp(exact, 8)).max())
