"""Similarity measures on hand-made cases: symmetric KL, logit MSE, disagreement, linear CKA, Gram-matrix pairs,
and the rank correlations the analysis rests on (against scipy)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from ladle.evaluation.similarity import (
    disagreement,
    linear_cka,
    logit_mse,
    pairwise_from_gram,
    pearson,
    prediction_measures,
    spearman,
    symmetric_kl,
)


def orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


# ---------------------------------------------------------------- symmetric KL


def test_kl_of_identical_logits_is_zero():
    logits = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    assert symmetric_kl(logits, logits) == 0.0
    # softmax ignores a constant added to a row: still the same distributions
    assert symmetric_kl(logits, logits + 7.0) == pytest.approx(0.0, abs=1e-12)


def test_kl_two_classes_by_hand():
    # p = softmax(0, 0) = (1/2, 1/2); q = softmax(ln 3, 0) = (3/4, 1/4).
    # ½ Σ (p − q)(ln p − ln q) = ½[(−1/4) ln(2/3) + (1/4) ln 2] = ⅛ ln 3
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert symmetric_kl(a, b) == pytest.approx(math.log(3.0) / 8, rel=1e-12)
    # the same as ½(KL(p‖q) + KL(q‖p)) written out
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert symmetric_kl(a, b) == pytest.approx(0.5 * (kl_pq + kl_qp), rel=1e-12)
    # mean over examples: one identical example halves it
    assert symmetric_kl(torch.cat([a, a]), torch.cat([b, a])) == pytest.approx(math.log(3.0) / 16, rel=1e-12)


def test_kl_is_symmetric_and_stable():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(20, 5, generator=g), 3 * torch.randn(20, 5, generator=g)
    assert symmetric_kl(a, b) == pytest.approx(symmetric_kl(b, a), rel=1e-12)
    assert symmetric_kl(a, b) > 0
    # confident logits where softmax underflows: p = (1, 0), q = (0, 1), log-ratios ±1000 → ½(1000 + 1000)
    assert symmetric_kl(torch.tensor([[1000.0, 0.0]]), torch.tensor([[0.0, 1000.0]])) == pytest.approx(1000.0)


def test_kl_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        symmetric_kl(torch.zeros(3, 2), torch.zeros(3, 4))


# ---------------------------------------------------------------- MSE, disagreement


def test_logit_mse_and_disagreement_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 8.0]])
    assert logit_mse(a, b) == pytest.approx((0 + 4 + 0 + 16) / 4)  # differences 0, 2, 0, −4
    # argmax a: 0, 1, 2, 0; argmax b: 0, 2, 2, 1 → 2 of 4 differ
    a = torch.tensor([[5.0, 1, 0], [0, 5, 1], [0, 1, 5], [9, 0, 0]])
    b = torch.tensor([[3.0, 1, 0], [0, 1, 5], [0, 1, 2], [0, 9, 0]])
    assert disagreement(a, b) == 0.5
    assert disagreement(a, a) == 0.0


# ---------------------------------------------------------------- linear CKA


def hsic_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA the textbook way, from n×n Gram matrices: tr(KHLH) / sqrt(tr(KHKH) tr(LHLH))."""
    x, y = x.double(), y.double()
    n = x.shape[0]
    h = torch.eye(n, dtype=torch.float64) - 1.0 / n
    k, l_ = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((k * l_).sum() / ((k * k).sum() * (l_ * l_).sum()).sqrt())


def test_cka_identical_is_one_and_matches_the_gram_form():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
    assert 0.0 <= linear_cka(x, y) <= 1.0


def test_cka_of_orthogonal_centred_features_is_zero():
    x = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])  # centred, and orthogonal to y
    y = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert linear_cka(x, y) == pytest.approx(0.0, abs=1e-15)
    # two-dimensional: x spans the first two coordinates of a centred orthogonal basis, y the other two
    basis = torch.tensor([[1.0, 1, 1, 1, 1, 1, 1, 1], [1, -1, 1, -1, 1, -1, 1, -1], [1, 1, -1, -1, 1, 1, -1, -1],
                          [1, 1, 1, 1, -1, -1, -1, -1], [1, -1, -1, 1, 1, -1, -1, 1]]).T  # Hadamard columns
    assert linear_cka(basis[:, 1:3], basis[:, 3:5]) == pytest.approx(0.0, abs=1e-15)
    # constant features have nothing to compare
    assert math.isnan(linear_cka(torch.ones(4, 2), y))


def test_cka_invariant_to_rotation_and_isotropic_scaling():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=g, dtype=torch.float64), torch.randn(30, 4, generator=g, dtype=torch.float64)
    base = linear_cka(x, y)
    assert linear_cka(x @ orthogonal(5, 4) * 2.5, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, 0.01 * y @ orthogonal(4, 5)) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x, x @ orthogonal(5, 6) * 7) == pytest.approx(1.0, rel=1e-10)
    # a translation does not matter either (features are centred), an anisotropic scaling does
    assert linear_cka(x + 3.0, y) == pytest.approx(base, rel=1e-10)
    assert linear_cka(x * torch.tensor([1.0, 10, 1, 1, 1], dtype=torch.float64), y) != pytest.approx(base, rel=1e-3)


def test_cka_flattens_conv_features_and_checks_lengths():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(10, 2, 3, 3, generator=g)
    assert linear_cka(x, x.reshape(10, -1)) == pytest.approx(1.0)
    assert linear_cka(torch.arange(5.0), 2 * torch.arange(5.0)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="numbers of examples"):
        linear_cka(torch.zeros(3, 2), torch.zeros(4, 2))


def test_prediction_measures():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(25, 4, generator=g), torch.randn(25, 4, generator=g)
    m = prediction_measures(a, b)
    assert list(m) == ["kl", "logit_mse", "disagreement", "cka_logits"]
    assert m["kl"] == symmetric_kl(a, b) and m["cka_logits"] == linear_cka(a, b)
    fa, fb = torch.randn(25, 8, generator=g), torch.randn(25, 8, generator=g)
    assert prediction_measures(a, b, fa, fb)["cka_features"] == linear_cka(fa, fb)
    same = prediction_measures(a, a, fa, fa)
    assert same == {"kl": 0.0, "logit_mse": 0.0, "disagreement": 0.0, "cka_logits": pytest.approx(1.0),
                    "cka_features": pytest.approx(1.0)}


# ---------------------------------------------------------------- weights from a Gram matrix


def test_pairwise_from_gram_matches_direct_computation():
    g = torch.Generator().manual_seed(6)
    theta = torch.randn(5, 40, generator=g, dtype=torch.float64)
    theta[4] = 0.0  # a zero vector has no direction
    l2, cosine = pairwise_from_gram(theta @ theta.T)
    assert l2.dtype == torch.float64 and l2.shape == (5, 5)
    for i in range(5):
        assert l2[i, i] == 0.0
        for j in range(5):
            assert l2[i, j] == pytest.approx(float(torch.dist(theta[i], theta[j])), rel=1e-10)
            if i < 4 and j < 4:
                expected = float(torch.nn.functional.cosine_similarity(theta[i], theta[j], dim=0))
                assert cosine[i, j] == pytest.approx(expected, rel=1e-10)
            else:
                assert math.isnan(cosine[i, j])
    # task vectors: the Gram of θ − base gives the task-vector cosine
    base = torch.randn(40, generator=g, dtype=torch.float64)
    tasks = theta[:4] - base
    _, task_cosine = pairwise_from_gram(tasks @ tasks.T)
    assert task_cosine[0, 1] == pytest.approx(float(torch.nn.functional.cosine_similarity(tasks[0], tasks[1], dim=0)))
    # rounding can make G_ii + G_jj − 2 G_ij slightly negative for equal vectors: clamped, never NaN
    same = torch.tensor([[1.0, 1.0 + 1e-16], [1.0 + 1e-16, 1.0]], dtype=torch.float64)
    assert pairwise_from_gram(same)[0][0, 1] == 0.0
    with pytest.raises(ValueError, match="square"):
        pairwise_from_gram(torch.zeros(2, 3))


# ---------------------------------------------------------------- rank correlations


def test_spearman_and_pearson_against_scipy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y[:20] = y[:20].round()  # some ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-12)
    assert spearman(list(x), torch.tensor(y)) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)


def test_correlations_leave_out_missing_values_without_warnings():
    x = [1.0, 2.0, None, 4.0, math.nan, 6.0, 7.0]
    y = [2.0, 1.0, 5.0, 4.0, 3.0, None, 9.0]
    kept_x, kept_y = [1.0, 2.0, 4.0, 7.0], [2.0, 1.0, 4.0, 9.0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert spearman(x, y) == pytest.approx(stats.spearmanr(kept_x, kept_y)[0])
        assert pearson(x, y) == pytest.approx(stats.pearsonr(kept_x, kept_y)[0])
        assert math.isnan(spearman([1.0, 2.0, None], [1.0, 2.0, 3.0]))  # 2 left: too few
        assert math.isnan(pearson([1.0, 2.0], [2.0, 1.0]))
        assert math.isnan(spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]))  # constant
        assert math.isnan(pearson([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]))
        assert math.isnan(spearman([], []))
    assert caught == []


def test_cka_with_more_features_than_examples_uses_the_example_space_form():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 64, generator=g, dtype=torch.float64), torch.randn(20, 48, generator=g, dtype=torch.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_form = float((yc.T @ xc).square().sum() / ((xc.T @ xc).norm() * (yc.T @ yc).norm()))
    assert linear_cka(x, y) == pytest.approx(feature_form, rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-12)
