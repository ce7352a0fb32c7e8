"""Model Breadcrumbs, DELLA and the Karcher mean: float64 references written from the papers' formulas, the
invariants, and one-line errors."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import ladle
from ladle.errors import LadleError
from ladle.soup import mixing

KEY = "w"


def st(values) -> dict[str, torch.Tensor]:
    return {KEY: torch.as_tensor(np.asarray(values), dtype=torch.float32)}


def cooked(recipe, ingredients, **kw) -> np.ndarray:
    return ladle.cook(recipe, ingredients, **kw).state_dict[KEY].numpy()


@pytest.fixture(scope="module")
def tensors():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((12, 10)).astype(np.float32)
    fts = [base + rng.standard_normal(base.shape).astype(np.float32) * s for s in (0.5, 1.0, 0.8)]
    fts[1][0, :4] = fts[1][0, :4] * 0 + base[0, :4] + 0.25  # equal magnitudes: order by index decides
    return base, fts


# ---------------------------------------------------------------- float64 references, from the papers' formulas


def ref_breadcrumbs_mask(tau: np.ndarray, gamma: float, density: float) -> np.ndarray:
    flat = tau.reshape(-1).astype(np.float64)
    n = flat.size
    order = sorted(range(n), key=lambda i: (-abs(flat[i]), i))  # largest first, equal magnitudes by index
    top, keep = round(gamma * n), round(density * n)
    out = np.zeros(n)
    for i in order[top : top + keep]:
        out[i] = flat[i]
    return out.reshape(tau.shape)


def ref_elect_mean(deltas: list[np.ndarray]) -> np.ndarray:
    d = np.stack(deltas)
    sign = np.sign(d.sum(0))
    agree = (np.sign(d) == sign) & (d != 0) & (sign != 0)
    count = agree.sum(0)
    return np.where(count > 0, (d * agree).sum(0) / np.maximum(count, 1), 0.0)


def ref_karcher(xs: list[np.ndarray], weights: list[float], iterations: int = 200) -> np.ndarray:
    """The weighted Fréchet mean on the unit sphere by Riemannian gradient descent in float64, times the weighted
    mean norm."""
    w = np.asarray(weights, dtype=np.float64) / sum(weights)
    norms = [np.linalg.norm(x) for x in xs]
    u = [x.reshape(-1).astype(np.float64) / r for x, r in zip(xs, norms)]
    m = sum(wi * ui for wi, ui in zip(w, u))
    m /= np.linalg.norm(m)
    for _ in range(iterations):
        g = np.zeros_like(m)
        for wi, ui in zip(w, u):
            c = np.clip(ui @ m, -1, 1)
            th = np.arccos(c)
            g += wi * (th / np.sin(th) if th > 1e-12 else 1.0) * (ui - c * m)
        t = np.linalg.norm(g)
        if t < 1e-14:
            break
        m = np.cos(t) * m + np.sin(t) * g / t
    return (m * float(np.dot(w, norms))).reshape(xs[0].shape)


# ---------------------------------------------------------------- Breadcrumbs


def test_breadcrumbs_is_the_base_plus_the_banded_task_vectors(tensors):
    base, fts = tensors
    got = cooked("breadcrumbs", [st(f) for f in fts], base=st(base), density=0.5, gamma=0.1, lambda_=0.7)
    taus = [f.astype(np.float64) - base for f in fts]
    expected = base + 0.7 * sum(ref_breadcrumbs_mask(t, 0.1, 0.5) for t in taus)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    n = base.size  # round(0.1·120) = 12 removed from the top, round(0.5·120) = 60 kept
    mask = mixing.breadcrumbs_mask(taus[0].astype(np.float32), 0.1, 0.5)
    assert np.count_nonzero(mask) == 60 and round(0.1 * n) == 12
    top = np.argsort(-np.abs(taus[0]).reshape(-1), kind="stable")
    assert not mask.reshape(-1)[top[:12]].any() and mask.reshape(-1)[top[12:72]].all()


def test_breadcrumbs_ties_elects_signs_over_the_same_masks(tensors):
    base, fts = tensors
    got = cooked("breadcrumbs-ties", [st(f) for f in fts], base=st(base), density=0.6, gamma=0.05)
    taus = [f.astype(np.float64) - base for f in fts]
    expected = base + ref_elect_mean([ref_breadcrumbs_mask(t, 0.05, 0.6) for t in taus])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_breadcrumbs_without_outliers_is_task_arithmetic_on_ties_trimmed_task_vectors(tensors):
    base, fts = tensors
    got = cooked("breadcrumbs", [st(f) for f in fts], base=st(base), density=0.25, gamma=0.0)  # 30 of 120: exact
    taus = [f - base for f in fts]
    trimmed = [mixing.ties_trim(t, 0.25) for t in taus]
    expected = mixing.task_arithmetic(base, iter(trimmed), 1.0)
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- DELLA


def test_della_rescales_each_kept_entry_by_one_over_its_rank_keep_probability(tensors):
    base, fts = tensors
    zero = np.zeros_like(base)
    tau = fts[0] - base
    got = cooked("della-linear", [st(tau)], base=st(zero), density=0.4, epsilon=0.2, seed=3)
    n = tau.size
    p = mixing.della_probabilities(n, 0.4, 0.2)
    assert p[0] == pytest.approx(0.8) and p[-1] == pytest.approx(0.4)  # smallest |τ| dropped most often
    ranks = np.empty(n, dtype=int)
    ranks[np.argsort(-np.abs(tau.reshape(-1)), kind="stable")[::-1]] = np.arange(n)  # 0: the smallest
    kept = got.reshape(-1) != 0
    assert 0 < kept.sum() < n
    ratio = got.reshape(-1)[kept] / tau.reshape(-1)[kept]
    np.testing.assert_allclose(ratio, 1.0 / (1.0 - p[ranks[kept]]), rtol=1e-6)
    again = cooked("della-linear", [st(tau)], base=st(zero), density=0.4, epsilon=0.2, seed=3)
    assert np.array_equal(got, again)  # seeded: the same bytes
    assert not np.array_equal(got, cooked("della-linear", [st(tau)], base=st(zero), density=0.4, epsilon=0.2, seed=4))


def test_della_keeps_density_of_the_entries_on_average_and_merges_like_ties():
    rng = np.random.default_rng(1)
    tau = rng.standard_normal(200_000).astype(np.float32)
    dropped = mixing.della_drop(tau, 0.3, 0.1, mixing.dare_generator(0, "k", 0))
    assert np.count_nonzero(dropped) / tau.size == pytest.approx(0.3, abs=0.005)
    p = np.empty(tau.size)
    p[np.argsort(-np.abs(tau), kind="stable")[::-1]] = mixing.della_probabilities(tau.size, 0.3, 0.1)
    sd = math.sqrt(float(np.sum(tau.astype(np.float64) ** 2 * p / (1 - p))))  # of the rescaled sum around Σ τ
    assert abs(float(dropped.astype(np.float64).sum()) - float(tau.astype(np.float64).sum())) < 4 * sd
    base = np.zeros((8, 8), dtype=np.float32)
    fts = [rng.standard_normal((8, 8)).astype(np.float32) for _ in range(3)]
    got = cooked("della", [st(f) for f in fts], base=st(base), density=0.5, epsilon=0.1, seed=7)
    pruned = [mixing.della_drop(f.copy(), 0.5, 0.1, mixing.dare_generator(7, f"della\0{KEY}", i)).astype(np.float64)
              for i, f in enumerate(fts)]
    np.testing.assert_allclose(got, ref_elect_mean(pruned), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- Karcher


def test_karcher_mean_equals_the_spherical_reference(tensors):
    base, fts = tensors
    got = cooked("karcher", [st(f) for f in fts], weights=[1.0, 2.0, 0.5])
    expected = ref_karcher(fts, [1.0, 2.0, 0.5])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_karcher_of_two_at_equal_weight_is_the_spherical_midpoint_times_the_mean_norm(tensors):
    _, (a, b, _) = tensors
    got = cooked("karcher", [st(a), st(b)])
    ua, ub = a / np.linalg.norm(a), b / np.linalg.norm(b)
    mid = (ua + ub) / np.linalg.norm(ua + ub)
    np.testing.assert_allclose(got, mid * (np.linalg.norm(a) + np.linalg.norm(b)) / 2, rtol=1e-5, atol=1e-6)


def test_karcher_of_one_or_of_identical_ingredients_gives_it_back(tensors):
    _, (a, _, _) = tensors
    np.testing.assert_allclose(cooked("karcher", [st(a)]), a, rtol=1e-6, atol=1e-7)
    soup = ladle.cook("karcher", [st(a), st(a), st(a)])
    np.testing.assert_allclose(soup.state_dict[KEY].numpy(), a, rtol=1e-6, atol=1e-7)
    assert soup.manifest["trace"]["karcher"][KEY]["converged"]


# ---------------------------------------------------------------- bad parameters


@pytest.mark.parametrize("recipe, args, message", [
    ("breadcrumbs", ["--density", "0"], "density: must be in (0, 1]"),
    ("breadcrumbs", ["--density", "1.5"], "density: must be in (0, 1]"),
    ("breadcrumbs-ties", ["--density", "0.8", "--gamma", "0.3"], "gamma + density"),
    ("della", ["--density", "0.5", "--epsilon", "0.6"], "epsilon: drop probabilities"),
    ("karcher", ["--weights=1,-1"], "weights: must be non-negative"),
])
def test_bad_parameters_are_one_line_exit_2_and_nothing_written(tmp_path, recipe, args, message):
    from safetensors.torch import save_file

    for name in ("a", "b", "base"):
        save_file({KEY: torch.randn(4, 4)}, str(tmp_path / f"{name}.safetensors"))
    base = ["--base", str(tmp_path / "base.safetensors")] if recipe != "karcher" else []
    out = tmp_path / "soup.safetensors"
    result = subprocess.run([sys.executable, "-m", "ladle", "cook", recipe, str(tmp_path / "a.safetensors"),
                             str(tmp_path / "b.safetensors"), *base, *args, "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(LadleError):
        ladle.cook(recipe, [st(np.ones(3))] * 2, **({"base": st(np.zeros(3))} if base else {}),
                   **{a.lstrip("-").split("=")[0].replace("-", "_"): _value(a, args) for a in args if a.startswith("--")})


def _value(flag: str, args: list[str]):
    if "=" in flag:
        return [float(v) for v in flag.split("=", 1)[1].split(",")]
    return float(args[args.index(flag) + 1])


def test_karcher_records_its_iterations_and_stops_at_the_tolerance(tensors):
    _, fts = tensors
    soup = ladle.cook("karcher", [st(f) for f in fts], tolerance=1e-3)
    loose = soup.manifest["trace"]["karcher"][KEY]["iterations"]
    tight = ladle.cook("karcher", [st(f) for f in fts], tolerance=1e-9).manifest["trace"]["karcher"][KEY]["iterations"]
    assert 1 <= loose < tight and math.isfinite(float(soup.state_dict[KEY].sum()))
