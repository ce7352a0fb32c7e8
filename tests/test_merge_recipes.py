"""Task arithmetic, TIES, DARE, DARE-TIES and SLERP: hand-computed tensors, a float64 reference holding every
tensor at once, invariants, memory flat in the number of ingredients, and one-line errors."""

import hashlib
import math
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

import ladle
from ladle.errors import LadleError
from ladle.io.dtypes import numpy_dtype, to_numpy, to_torch
from ladle.soup import mixing
from ladle.soup.recipes import RECIPES
from ladle.soup.recipes import dare as _dare, slerp as _slerp, task_arithmetic as _ta, ties as _ties  # noqa: F401  (register)

KEY = "w"


def st(values, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {KEY: torch.as_tensor(values, dtype=dtype)}


def cooked(recipe, ingredients, **kw) -> torch.Tensor:
    return ladle.cook(recipe, ingredients, **kw).state_dict[KEY]


def mix(recipe, xs, base, accumulate=torch.float32, key=KEY, **params):
    """The plan's raw output (accumulator dtype), fed from a list: what cook does per key, minus the final cast
    (plans mix numpy arrays; the tensors here share their memory)."""
    plan = RECIPES[recipe].make_plan(len(xs), **params)
    arrays = [to_numpy(x) for x in xs]
    out = plan.mix(key, lambda indices: (arrays[i] for i in indices), None if base is None else to_numpy(base),
                   numpy_dtype(accumulate))
    return to_torch(out), plan


# ---------------------------------------------------------------- float64 references: plain, holding everything


def ref_trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Top-k by magnitude with k = ⌈density·numel⌉ (≥ 1); equal magnitudes: lower flat index first (stable sort)."""
    flat = tau.reshape(-1)
    k = max(1, min(flat.numel(), math.ceil(density * flat.numel() - 1e-9)))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat.abs(), descending=True, stable=True).indices[:k]] = True
    return torch.where(keep, flat, 0.0).reshape(tau.shape)


def ref_elect_mean(deltas: list[torch.Tensor]) -> torch.Tensor:
    d = torch.stack(deltas)
    sign = torch.sign(d.sum(0))
    agree = (torch.sign(d) == sign) & (d != 0)
    count = agree.sum(0)
    return torch.where(count > 0, (d * agree).sum(0) / count.clamp_min(1), 0.0)


def ref_taus(xs, base):
    b = base.double()
    return b, [x.double() - b for x in xs]


def ref_task_arithmetic(xs, base, lambda_):
    b, taus = ref_taus(xs, base)
    return b + lambda_ * torch.stack(taus).sum(0)


def ref_ties(xs, base, density, lambda_):
    b, taus = ref_taus(xs, base)
    return b + lambda_ * ref_elect_mean([ref_trim(t, density) for t in taus])


def ref_dropped(xs, base, p, seed, key=KEY):
    """DARE's drops, with ladle's seeded masks (the random stream is ladle's; the arithmetic is the reference's)."""
    b, taus = ref_taus(xs, base)
    return b, [t * torch.from_numpy(mixing.dare_keep_mask(t.shape, p, mixing.dare_generator(seed, key, i))) / (1 - p)
               for i, t in enumerate(taus)]


def ref_dare(xs, base, p, lambda_, seed, key=KEY):
    b, dropped = ref_dropped(xs, base, p, seed, key)
    return b + lambda_ * torch.stack(dropped).sum(0)


def ref_dare_ties(xs, base, p, lambda_, seed, key=KEY):
    b, dropped = ref_dropped(xs, base, p, seed, key)
    return b + lambda_ * ref_elect_mean(dropped)


def ref_slerp(a, b, t):
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    cos = torch.dot(a / na, b / nb).clamp(-1, 1)
    if cos.abs() > 0.9995:
        return (1 - t) * a + t * b
    theta = torch.arccos(cos)
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)


# ---------------------------------------------------------------- exact values, by hand

BASE4 = [1.0, 1.0, 1.0, 1.0]
# task vectors τA = [1, −2, 3, 0], τB = [−1, 1, 2, 4], τC = [2, −3, −1, −4] on top of BASE4
A4, B4, C4 = [2.0, -1.0, 4.0, 1.0], [0.0, 2.0, 3.0, 5.0], [3.0, -2.0, 0.0, -3.0]


def test_task_arithmetic_exact():
    # Σ τ = [2, −4, 4, 0]; base + 0.5·Σ τ
    got = cooked("task-arithmetic", [st(A4), st(B4), st(C4)], base=st(BASE4), lambda_=0.5)
    assert torch.equal(got, torch.tensor([2.0, -1.0, 3.0, 1.0]))
    soup = ladle.cook("task-arithmetic", [st(A4), st(B4), st(C4)], base=st(BASE4), lambda_=0.5)
    assert soup.manifest["weights"] == [0.5, 0.5, 0.5] and soup.manifest["base_weight"] == -0.5  # 1 − nλ
    # λ < 0 subtracts the tasks
    assert torch.equal(cooked("task-arithmetic", [st(A4)], base=st(BASE4), lambda_=-1.0), torch.tensor([0.0, 3.0, -2.0, 1.0]))


def test_ties_exact_density_half():
    # k = 2 per task vector: τA → [0, −2, 3, 0], τB → [0, 0, 2, 4], τC → [0, −3, 0, −4]
    # summed mass [0, −5, 5, 0] elects [none, −, +, none]; agreeing means: [0, (−2−3)/2, (3+2)/2, 0]
    soup = ladle.cook("ties", [st(A4), st(B4), st(C4)], base=st(BASE4), density=0.5, lambda_=2.0)
    assert torch.equal(soup.state_dict[KEY], torch.tensor([1.0, 1.0 - 5.0, 1.0 + 5.0, 1.0]))
    # entry 3: 4 and −4 cancel exactly, no sign is elected, the base stays; 2 kept entries lost to the election
    assert soup.manifest["trace"]["ties"][KEY] == {"kept": 6, "sign_conflicts": 2}


def test_ties_exact_density_three_quarters():
    # k = 3: τA → [1, −2, 3, 0]; τB: |−1| and |1| tie for third place, the lower index wins → [−1, 0, 2, 4];
    # τC → [2, −3, 0, −4]. Mass [2, −5, 5, 0] → signs [+, −, +, none];
    # entry 0: mean(1, 2) = 1.5 (τB's −1 disagrees); entry 1: mean(−2, −3); entry 2: mean(3, 2); entry 3: base
    soup = ladle.cook("ties", [st(A4), st(B4), st(C4)], base=st(BASE4), density=0.75)
    assert torch.equal(soup.state_dict[KEY], torch.tensor([2.5, -1.5, 3.5, 1.0]))
    assert soup.manifest["trace"]["ties"][KEY] == {"kept": 9, "sign_conflicts": 3}


def test_ties_trim_keeps_exactly_k_and_breaks_ties_by_lowest_index():
    tau = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5])
    assert torch.equal(mixing.ties_trim(tau, 0.4), torch.tensor([1.0, -1.0, 0.0, 0.0, 0.0]))
    assert torch.equal(mixing.ties_trim(tau, 0.8), torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0]))
    assert torch.equal(mixing.ties_trim(tau.reshape(1, 5), 0.6), torch.tensor([[1.0, -1.0, 1.0, 0.0, 0.0]]))
    kept = mixing.ties_trim(tau, 1.0)
    assert torch.equal(kept, tau) and kept.data_ptr() == tau.data_ptr()  # τ itself: nothing copied
    # k = ⌈density·n⌉, at least one; 0.2·10 is 2 even though the float 0.2 is a hair above 1/5
    assert [mixing.ties_keep_count(10, d) for d in (0.2, 0.25, 0.01, 1.0)] == [2, 3, 1, 10]
    assert mixing.ties_keep_count(1, 0.2) == 1 and mixing.ties_keep_count(0, 0.5) == 0
    # more zeros than dropped places: every nonzero entry survives
    sparse = torch.tensor([0.0, 3.0, 0.0, 0.0, -1.0, 0.0])
    assert torch.equal(mixing.ties_trim(sparse, 0.5), sparse)


def test_dare_drops_and_rescales_exactly():
    tau = torch.arange(1.0, 40001.0)  # distinct, exactly representable
    base = torch.zeros_like(tau)
    got = cooked("dare", [{KEY: tau}], base={KEY: base}, p=0.75, seed=3)
    kept = got != 0
    assert torch.equal(got[kept], 4.0 * tau[kept])  # survivors ×1/(1 − 0.75), exactly
    assert abs(kept.float().mean().item() - 0.25) < 0.01  # 40 000 draws: the standard deviation is 0.002
    assert np.array_equal(kept.numpy(), mixing.dare_keep_mask(tau.shape, 0.75, mixing.dare_generator(3, KEY, 0)))


def test_dare_masks_are_sha256_seeded_per_seed_key_and_ingredient():
    digest = hashlib.sha256(f"ladle-dare\0{7}\0{'layer.weight'}\0{2}".encode()).digest()
    expected = torch.rand(5, 3, generator=torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)) >= 0.5
    # torch's own CPU generator, seeded the same way: ladle's numpy masks are those bits
    assert np.array_equal(mixing.dare_keep_mask((5, 3), 0.5, mixing.dare_generator(7, "layer.weight", 2)),
                          expected.numpy())


def test_dare_ties_exact_with_its_masks():
    # p = 0.5: survivors doubled; then TIES' election and disjoint mean over the doubled survivors
    xs = [st(A4), st(B4), st(C4)]
    masks = [torch.from_numpy(mixing.dare_keep_mask((4,), 0.5, mixing.dare_generator(11, KEY, i))) for i in range(3)]
    taus = [torch.tensor([1.0, -2, 3, 0]), torch.tensor([-1.0, 1, 2, 4]), torch.tensor([2.0, -3, -1, -4])]
    dropped = [torch.where(m, 2 * t, 0.0) for m, t in zip(masks, taus)]
    expected = []
    for j in range(4):
        column = [float(d[j]) for d in dropped]
        mass = sum(column)
        agreeing = [v for v in column if v != 0 and math.copysign(1, v) == math.copysign(1, mass)] if mass else []
        expected.append(1.0 + (sum(agreeing) / len(agreeing) if agreeing else 0.0))
    got = cooked("dare-ties", xs, base=st(BASE4), p=0.5, seed=11)
    assert torch.equal(got, torch.tensor(expected))


def test_slerp_exact():
    a, b = st([1.0, 0.0]), st([0.0, 1.0])  # orthogonal: θ = π/2
    got = cooked("slerp", [a, b], t=0.5)
    assert torch.allclose(got, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), rtol=0, atol=1e-7)
    got = cooked("slerp", [a, b], t=1 / 3)  # the point at angle π/6 on the unit circle
    assert torch.allclose(got, torch.tensor([math.sqrt(3) / 2, 0.5]), rtol=0, atol=1e-7)
    # the weights apply to the originals: norms 2 and 1 stay in the mix
    got = cooked("slerp", [st([2.0, 0.0]), b], t=0.5)
    assert torch.allclose(got, torch.tensor([math.sqrt(2.0), math.sqrt(0.5)]), rtol=0, atol=1e-7)
    soup = ladle.cook("slerp", [a, b], t=0.5)
    assert soup.manifest["trace"]["slerp"][KEY] == {"cos": 0.0, "linear": False} and soup.notes == []


# ---------------------------------------------------------------- against the float64 reference

SHAPES = [(), (1,), (7,), (3, 5), (2, 3, 4), (48, 33)]


def random_case(shape, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    xs = [(base + 0.05 * torch.randn(shape, generator=g)).to(dtype) for _ in range(n)]
    return xs, base.to(dtype)


CASES = [
    ("task-arithmetic", {"lambda_": 0.7}, ref_task_arithmetic),
    ("ties", {"density": 0.2, "lambda_": 1.0}, ref_ties),
    ("ties", {"density": 0.5, "lambda_": 1.3}, ref_ties),
    ("ties", {"density": 1.0, "lambda_": 0.5}, ref_ties),
    ("dare", {"p": 0.9, "lambda_": 0.5, "seed": 1}, ref_dare),
    ("dare", {"p": 0.3, "lambda_": 1.0, "seed": 2}, ref_dare),
    ("dare-ties", {"p": 0.9, "lambda_": 1.0, "seed": 3}, ref_dare_ties),
    ("dare-ties", {"p": 0.5, "lambda_": 0.8, "seed": 4}, ref_dare_ties),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("recipe,params,reference", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_float64_reference(recipe, params, reference, dtype):
    for s, shape in enumerate(SHAPES):
        for n in (1, 4):
            xs, base = random_case(shape, n, dtype, seed=100 * s + n)
            expected = reference(xs, base, **params)
            got32, _ = mix(recipe, xs, base, torch.float32, **params)
            assert got32.dtype == torch.float32 and got32.shape == base.shape
            torch.testing.assert_close(got32.double(), expected, rtol=1e-6, atol=1e-6)
            got64, _ = mix(recipe, xs, base, torch.float64, **params)
            assert got64.dtype == torch.float64
            torch.testing.assert_close(got64, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_slerp_matches_float64_reference(dtype):
    for s, shape in enumerate(SHAPES[1:]):
        g = torch.Generator().manual_seed(s)
        a, b = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
        for t in (0.0, 0.25, 0.5, 0.9, 1.0):
            expected = ref_slerp(a, b, t).reshape(shape)
            got32, plan = mix("slerp", [a, b], None, torch.float32, t=t)
            torch.testing.assert_close(got32.double(), expected, rtol=1e-6, atol=1e-6)
            got64, _ = mix("slerp", [a, b], None, torch.float64, t=t)
            torch.testing.assert_close(got64, expected, rtol=1e-12, atol=1e-12)
            assert plan.trace()["slerp"][KEY]["linear"] is (shape == (1,))  # one entry: always parallel


def test_cook_casts_to_the_ingredients_dtype():
    for recipe, params, reference in CASES[1::2]:
        xs, base = random_case((6, 10), 3, torch.bfloat16, seed=9)
        got = cooked(recipe, [{KEY: x} for x in xs], base={KEY: base}, **params)
        assert got.dtype == torch.bfloat16
        # one bf16 rounding of the exact value (ties-to-even of a float32 can land one bf16 step away)
        torch.testing.assert_close(got.double(), reference(xs, base, **params), rtol=2 ** -8, atol=1e-6)


# ---------------------------------------------------------------- invariants


def test_task_arithmetic_of_one_ingredient_gives_it_back():
    xs, base = random_case((5, 7), 1, torch.float32, seed=1)
    exact = cooked("task-arithmetic", [{KEY: xs[0]}], base={KEY: base}, accumulate="float64")
    assert torch.equal(exact, xs[0])  # x − base and base + τ are exact in float64
    torch.testing.assert_close(cooked("task-arithmetic", [{KEY: xs[0]}], base={KEY: base}), xs[0], rtol=2e-7, atol=0)
    xs, base = random_case((5, 7), 1, torch.bfloat16, seed=1)
    assert torch.equal(cooked("task-arithmetic", [{KEY: xs[0]}], base={KEY: base}), xs[0])


def test_ties_of_identical_ingredients_with_density_one_gives_them_back():
    xs, base = random_case((4, 9), 1, torch.float32, seed=2)
    same = [{KEY: xs[0].clone()} for _ in range(3)]
    assert torch.equal(cooked("ties", same, base={KEY: base}, density=1.0, accumulate="float64"), xs[0])
    torch.testing.assert_close(cooked("ties", same, base={KEY: base}, density=1.0), xs[0], rtol=4e-7, atol=0)


def test_dare_with_p_zero_is_task_arithmetic_bit_for_bit():
    xs, base = random_case((6, 5), 4, torch.float32, seed=3)
    ings = [{KEY: x} for x in xs]
    assert torch.equal(cooked("dare", ings, base={KEY: base}, p=0.0, lambda_=0.6),
                       cooked("task-arithmetic", ings, base={KEY: base}, lambda_=0.6))


def test_dare_is_deterministic_for_a_seed_and_differs_for_another():
    xs, base = random_case((30, 30), 3, torch.float32, seed=4)
    ings = [{KEY: x} for x in xs]
    for recipe in ("dare", "dare-ties"):
        first = cooked(recipe, ings, base={KEY: base}, p=0.5, seed=5)
        assert torch.equal(first, cooked(recipe, ings, base={KEY: base}, p=0.5, seed=5))
        assert not torch.equal(first, cooked(recipe, ings, base={KEY: base}, p=0.5, seed=6))


def test_dare_mask_of_an_ingredient_ignores_the_others_and_the_tensor_order():
    base = torch.zeros(2, 50)
    a = torch.cat([torch.arange(1.0, 51.0), torch.zeros(50)]).reshape(2, 50)   # τA lives in row 0
    b = torch.cat([torch.zeros(50), -torch.arange(1.0, 51.0)]).reshape(2, 50)  # τB lives in row 1
    alone = cooked("dare", [{KEY: a}], base={KEY: base}, p=0.5, seed=8)
    with_b = cooked("dare", [{KEY: a}, {KEY: b}], base={KEY: base}, p=0.5, seed=8)
    assert torch.equal(with_b[0], alone[0]) and (with_b[1] != 0).any()
    # a zero task vector added at the end changes nothing
    assert torch.equal(cooked("dare", [{KEY: a}, {KEY: base}], base={KEY: base}, p=0.5, seed=8), alone)
    # other tensors, mixed before or not at all, do not move this tensor's draws
    more = {"a.first": torch.ones(100), KEY: a, "z.last": torch.ones(3)}
    both = ladle.cook("dare", [more], base={k: torch.zeros_like(v) for k, v in more.items()}, p=0.5, seed=8).state_dict
    assert torch.equal(both[KEY], alone)


def test_dare_gives_the_same_bytes_in_another_process(ckpt):
    xs, base = random_case((40, 25), 3, torch.float32, seed=10)
    paths = [ckpt.st(f"ft{i}", {KEY: x}) for i, x in enumerate(xs)]
    base_path = ckpt.st("base", {KEY: base})
    code = ("import hashlib, sys, ladle; s = ladle.cook('dare-ties', sys.argv[2:], base=sys.argv[1], p=0.7, seed=4)"
            ".state_dict['w']; print(hashlib.sha256(s.numpy().tobytes()).hexdigest())")
    here = hashlib.sha256(ladle.cook("dare-ties", paths, base=base_path, p=0.7, seed=4).state_dict[KEY].numpy().tobytes())
    for hashseed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        out = subprocess.run([sys.executable, "-c", "import ladle.soup.recipes.dare\n" + code, str(base_path), *map(str, paths)],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == here.hexdigest()


def test_slerp_endpoints_parallel_and_zero():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert torch.equal(cooked("slerp", [{KEY: a}, {KEY: b}], t=0.0), a)
    assert torch.equal(cooked("slerp", [{KEY: a}, {KEY: b}], t=1.0), b)
    soup = ladle.cook("slerp", [{KEY: a}, {KEY: 2 * a}], t=0.5)  # parallel: the linear midpoint, and it says so
    assert torch.equal(soup.state_dict[KEY], 1.5 * a)
    assert soup.manifest["trace"]["slerp"][KEY] == {"cos": 1.0, "linear": True}
    assert soup.notes and "1 of 1 tensors" in soup.notes[0]
    soup = ladle.cook("slerp", [{KEY: a}, {KEY: torch.zeros(3, 4)}], t=0.25)
    assert torch.equal(soup.state_dict[KEY], 0.75 * a)
    assert soup.manifest["trace"]["slerp"][KEY] == {"cos": None, "linear": True}


def test_ingredient_order_does_not_matter():
    xs, base = random_case((20, 17), 5, torch.float32, seed=6)
    ings, backwards = [{KEY: x} for x in xs], [{KEY: x} for x in reversed(xs)]
    for recipe, params in (("task-arithmetic", {"lambda_": 0.4}), ("ties", {"density": 0.3})):
        forward = ladle.cook(recipe, ings, base={KEY: base}, **params)
        reverse = ladle.cook(recipe, backwards, base={KEY: base}, **params)
        torch.testing.assert_close(forward.state_dict[KEY], reverse.state_dict[KEY], rtol=1e-6, atol=1e-6)
        assert forward.manifest["trace"] == reverse.manifest["trace"]


def test_ties_is_odd_in_the_task_vectors():
    """Negating every task vector negates the merge: no sign is preferred, not even on exact ties."""
    xs, base = random_case((9, 11), 4, torch.float64, seed=7)
    mirrored = [2 * base - x for x in xs]  # exact: float32 values in float64
    up, _ = mix("ties", xs, base, torch.float64, density=0.4, lambda_=1.0)
    down, _ = mix("ties", mirrored, base, torch.float64, density=0.4, lambda_=1.0)
    torch.testing.assert_close(up - base, base - down, rtol=1e-12, atol=1e-12)
    tied = [torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -2.0])]  # exact cancellation: the base stays
    assert torch.equal(mix("ties", tied, torch.zeros(2), density=1.0, lambda_=1.0)[0], torch.zeros(2))


# ---------------------------------------------------------------- memory flat in the number of ingredients


class CountingReader:
    """The `tensors(indices)` a plan is given, yielding fresh copies and counting how many are alive at once."""

    def __init__(self, sources):
        self.sources, self.alive, self.peak, self.reads = sources, 0, 0, 0

    def _gone(self):
        self.alive -= 1

    def __call__(self, indices):
        for i in indices:
            t = to_numpy(self.sources[i]).copy()
            self.alive += 1
            weakref.finalize(t, self._gone)
            self.reads += 1
            self.peak = max(self.peak, self.alive)
            yield t
            del t


@pytest.mark.parametrize("recipe,params,reference,passes", [
    ("ties", {"density": 0.3, "lambda_": 1.0}, ref_ties, 2),
    ("dare-ties", {"p": 0.6, "lambda_": 1.0, "seed": 1}, ref_dare_ties, 2),
    ("dare", {"p": 0.6, "lambda_": 1.0, "seed": 1}, ref_dare, 1),
    ("task-arithmetic", {"lambda_": 1.0}, ref_task_arithmetic, 1),
])
def test_plans_hold_at_most_two_ingredient_tensors(recipe, params, reference, passes):
    xs, base = random_case((64, 64), 8, torch.float32, seed=12)
    reader = CountingReader(xs)
    plan = RECIPES[recipe].make_plan(len(xs), **params)
    got = to_torch(plan.mix(KEY, reader, to_numpy(base), np.float32))
    assert reader.peak <= 2, f"{reader.peak} ingredient tensors alive at once"
    assert reader.alive == 0  # none kept after the key is mixed
    assert reader.reads == passes * len(xs)
    torch.testing.assert_close(got.double(), reference(xs, base, **params), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- parameters and errors


def test_registered_with_parameters_from_their_signatures():
    fields = {name: [(p.field, p.default) for p in RECIPES[name].parameters]
              for name in ("task-arithmetic", "ties", "dare", "dare-ties", "slerp")}
    assert fields == {"task-arithmetic": [("lambda", 1.0)], "ties": [("density", 0.2), ("lambda", 1.0)],
                      "dare": [("p", 0.9), ("lambda", 1.0), ("seed", 0)],
                      "dare-ties": [("p", 0.9), ("lambda", 1.0), ("seed", 0)], "slerp": [("t", 0.5)]}
    assert {RECIPES[n].base for n in fields} == {"required", "none"} and RECIPES["slerp"].base == "none"
    # the public name works too
    assert torch.equal(cooked("task-arithmetic", [st(A4)], base=st(BASE4), **{"lambda": 0.5}), torch.tensor([1.5, 0.0, 2.5, 1.0]))


def test_lambda_flag_on_the_command_line(cli, ckpt, out_dir):
    a, b, base = ckpt.st("a", st(A4)), ckpt.st("b", st(B4)), ckpt.st("base", st(BASE4))
    result = cli("cook", "ties", a, b, "--base", base, "--density", "0.5", "--lambda", "2", "-o", out_dir / "s.safetensors")
    assert result.code == 0, result.err
    # k = 2: τA → [0, −2, 3, 0], τB → [0, 0, 2, 4]; means [0, −2, 2.5, 4], ×2, plus the base
    assert torch.equal(ladle.load_soup(out_dir / "s.safetensors")[KEY], torch.tensor([1.0, -3.0, 6.0, 9.0]))


@pytest.mark.parametrize("recipe,kw,message", [
    ("ties", {"density": 1.5}, "density: must be in (0, 1], got 1.5"),
    ("ties", {"density": 0.0}, "density: must be in (0, 1], got 0.0"),
    ("dare", {"p": 1.0}, "p: must be in [0, 1), got 1.0"),
    ("dare-ties", {"p": -0.1}, "p: must be in [0, 1), got -0.1"),
    ("slerp", {"t": 1.5}, "t: must be in [0, 1], got 1.5"),
    ("slerp", {"t": -0.5}, "t: must be in [0, 1], got -0.5"),
    ("ties", {"lambda_": "big"}, "lambda: must be a number, got 'big'"),
    ("dare", {"seed": 1.5}, "seed: must be an integer, got 1.5"),
    ("ties", {"alpha": 0.5}, "alpha: not a parameter of recipe 'ties' (it takes: density, lambda)"),
])
def test_bad_parameters_are_one_line_errors(recipe, kw, message):
    ings = [st(A4), st(B4)]
    base = {} if recipe == "slerp" else {"base": st(BASE4)}
    with pytest.raises(LadleError) as e:
        ladle.cook(recipe, ings, **base, **kw)
    assert str(e.value) == message


def test_wrong_ingredients_or_base_are_one_line_errors():
    cases = [
        (lambda: ladle.cook("slerp", [st(A4), st(B4), st(C4)]), "slerp interpolates exactly two ingredients, got 3"),
        (lambda: ladle.cook("slerp", [st(A4), st(B4)], base=st(BASE4)), "recipe 'slerp' does not use a base model; drop --base"),
        (lambda: ladle.cook("ties", [st(A4), st(B4)]), "recipe 'ties' needs a base model (--base)"),
        (lambda: ladle.cook("dare", [st(A4)]), "recipe 'dare' needs a base model (--base)"),
    ]
    for run, message in cases:
        with pytest.raises(LadleError) as e:
            run()
        assert str(e.value) == message and "\n" not in message
