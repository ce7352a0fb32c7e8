"""Every recipe on small hand-made ingredients, with the exact expected tensors."""

import pytest
import torch

import ladle
from ladle.soup.recipes import RECIPES


def sd(w, b=None, steps=None, dtype=torch.float32):
    state = {"layer.weight": torch.tensor(w, dtype=dtype)}
    if b is not None:
        state["layer.bias"] = torch.tensor(b, dtype=dtype)
    if steps is not None:
        state["bn.num_batches_tracked"] = torch.tensor(steps)
    return state


A = sd([[1.0, 2.0], [3.0, 4.0]], [0.0, 8.0], steps=10)
B = sd([[3.0, 6.0], [5.0, 0.0]], [4.0, 0.0], steps=10)
C = sd([[2.0, 1.0], [1.0, 2.0]], [2.0, 4.0], steps=10)
BASE = sd([[0.0, 0.0], [0.0, 0.0]], [1.0, 1.0], steps=0)


def cooked(recipe, ingredients, **kw):
    return ladle.cook(recipe, ingredients, **kw).state_dict


def test_registry_lists_every_recipe_once():
    assert {"uniform", "weighted", "interpolate", "model-stock"} <= set(RECIPES)
    for r in RECIPES.values():
        assert r.summary and r.reference


def test_uniform_exact():
    soup = cooked("uniform", [A, B, C])
    assert torch.equal(soup["layer.weight"], torch.tensor([[2.0, 3.0], [3.0, 2.0]]))
    assert torch.equal(soup["layer.bias"], torch.tensor([2.0, 4.0]))
    assert torch.equal(soup["bn.num_batches_tracked"], torch.tensor(10))


def test_weighted_exact_and_normalised():
    soup = cooked("weighted", [A, B], weights=[1, 3])  # → 0.25, 0.75
    assert torch.equal(soup["layer.weight"], torch.tensor([[2.5, 5.0], [4.5, 1.0]]))
    assert torch.equal(soup["layer.bias"], torch.tensor([3.0, 2.0]))


def test_weighted_without_normalisation_is_a_plain_sum():
    soup = cooked("weighted", [A, B], weights=[1, 1], normalize=False)
    assert torch.equal(soup["layer.weight"], torch.tensor([[4.0, 8.0], [8.0, 4.0]]))


def test_weighted_zero_weight_ingredient_is_never_read():
    never = ladle.open_ingredient(B)

    def fail(key):
        raise AssertionError(f"read {key} of a zero-weight ingredient")

    never.get = fail
    soup = ladle.cook("weighted", [A, never], weights=[1, 0], include=["layer.*"]).state_dict
    assert torch.equal(soup["layer.weight"], A["layer.weight"])


def test_interpolate_exact():
    soup = cooked("interpolate", [A], base=BASE, alpha=0.25)
    assert torch.equal(soup["layer.weight"], torch.tensor([[0.25, 0.5], [0.75, 1.0]]))
    assert torch.equal(soup["layer.bias"], torch.tensor([0.75, 2.75]))
    # integer buffers come from the first fine-tuned ingredient, never from a blend
    assert torch.equal(soup["bn.num_batches_tracked"], torch.tensor(10))


def test_interpolate_endpoints_are_the_models():
    assert torch.equal(cooked("interpolate", [A], base=BASE, alpha=0.0)["layer.weight"], BASE["layer.weight"])
    assert torch.equal(cooked("interpolate", [A], base=BASE, alpha=1.0)["layer.weight"], A["layer.weight"])


def test_interpolate_extrapolates_and_says_so():
    soup = ladle.cook("interpolate", [A], base=BASE, alpha=2.0)
    assert torch.equal(soup.state_dict["layer.weight"], torch.tensor([[2.0, 4.0], [6.0, 8.0]]))
    assert any("extrapolates" in n for n in soup.notes)


def test_interpolate_with_several_finetuned_uses_their_mean():
    soup = cooked("interpolate", [A, B], base=BASE, alpha=0.5)
    assert torch.equal(soup["layer.weight"], torch.tensor([[1.0, 2.0], [2.0, 1.0]]))


def test_model_stock_exact():
    base = {"w": torch.tensor([0.0, 0.0]), "v": torch.tensor([1.0, 1.0])}
    ft1 = {"w": torch.tensor([1.0, 0.0]), "v": torch.tensor([2.0, 1.0])}
    ft2 = {"w": torch.tensor([1.0, 1.0]), "v": torch.tensor([1.0, 2.0])}
    soup = ladle.cook("model-stock", [ft1, ft2], base=base)
    # "w": task vectors [1,0] and [1,1]: cos = 1/√2, t = 2c/(1+c)
    c = 2**-0.5
    t = 2 * c / (1 + c)
    assert torch.allclose(soup.state_dict["w"], torch.tensor([t * 1.0, t * 0.5]), atol=1e-7)
    # "v": task vectors [1,0] and [0,1] are orthogonal: t = 0, the base is kept
    assert torch.allclose(soup.state_dict["v"], base["v"], atol=1e-7)
    trace = soup.manifest["trace"]["model_stock"]
    assert trace["w"]["t"] == pytest.approx(t, abs=1e-6) and trace["v"]["t"] == pytest.approx(0.0, abs=1e-6)


def test_model_stock_needs_two_and_a_base():
    with pytest.raises(ladle.LadleError, match="at least two"):
        ladle.cook("model-stock", [A], base=BASE)
    with pytest.raises(ladle.LadleError, match="needs a base"):
        ladle.cook("model-stock", [A, B])


def test_integer_tensors_are_never_averaged():
    a, b = dict(A), dict(B)
    a["idx"], b["idx"] = torch.tensor([1, 2, 3]), torch.tensor([3, 2, 1])
    soup = ladle.cook("uniform", [a, b])
    assert torch.equal(soup.state_dict["idx"], torch.tensor([1, 2, 3]))
    assert soup.state_dict["idx"].dtype == torch.int64
    assert soup.manifest["integer_policy"]["disagreeing_keys"] == ["idx"]
    with pytest.raises(ladle.LadleError, match="idx"):
        ladle.cook("uniform", [a, b], int_policy="strict")


def test_include_exclude_soup_only_the_shared_part():
    a = dict(A, **{"head.weight": torch.ones(3)})
    b = dict(B, **{"head.weight": torch.ones(5)})  # heads differ in shape: leave them out
    soup = cooked("uniform", [a, b], exclude=["head.*"])
    assert set(soup) == {"layer.weight", "layer.bias", "bn.num_batches_tracked"}
    soup = cooked("uniform", [a, b], include=["layer.*"])
    assert set(soup) == {"layer.weight", "layer.bias"}
    with pytest.raises(ladle.LadleError, match="head.weight"):
        ladle.cook("uniform", [a, b])


def test_output_keeps_the_ingredients_dtype_and_dtype_override():
    a16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in A.items()}
    b16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in B.items()}
    soup = cooked("uniform", [a16, b16])
    assert soup["layer.weight"].dtype == torch.bfloat16
    assert torch.equal(soup["layer.weight"], torch.tensor([[2.0, 4.0], [4.0, 2.0]], dtype=torch.bfloat16))
    with pytest.raises(ladle.LadleError, match="dtype"):
        ladle.cook("uniform", [A, b16])
    mixed = cooked("uniform", [A, b16], dtype="float32")
    assert mixed["layer.weight"].dtype == torch.float32
    assert torch.equal(mixed["layer.weight"], torch.tensor([[2.0, 4.0], [4.0, 2.0]]))


def test_float64_accumulator_on_request():
    tiny = {"w": torch.tensor([1.0 + 2**-23], dtype=torch.float32)}
    one = {"w": torch.tensor([1.0], dtype=torch.float32)}
    # mean of (1+ε) and 1 is 1+ε/2, not representable: float64 accumulation rounds the exact value once
    soup = ladle.cook("uniform", [tiny, one, tiny], accumulate="float64").state_dict
    exact = (2 * (1.0 + 2**-23) + 1.0) / 3
    assert soup["w"].item() == torch.tensor([exact], dtype=torch.float32).item()


def test_modules_are_ingredients():
    torch.manual_seed(0)
    m1, m2 = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    soup = ladle.cook("uniform", [m1, m2]).state_dict
    assert torch.allclose(soup["weight"], (m1.weight + m2.weight).detach() / 2)


def test_unknown_parameter_is_named():
    with pytest.raises(ladle.LadleError, match="alpha"):
        ladle.cook("uniform", [A, B], alpha=0.3)
