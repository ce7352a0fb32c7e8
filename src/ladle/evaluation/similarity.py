"""How alike two models are, as plain functions of their outputs or weights (no I/O, no models).

"When is model souping tasty?" (Ghyselincks, Mackenzie, Shelhamer) finds that prediction similarity predicts
the soup gain: the symmetric KL of the predicted distributions, the weights' L2 distance and cosine, and the
linear CKA of the representations. Every measure is computed in float64 and returned as a Python float (or a
float64 tensor for the pairwise ones), so a grid of thousands of pairs gives the same numbers whatever the
models' dtype. torch and scipy are imported on first use: the analysis of a pairs table needs neither torch
nor the import time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _f64(x) -> torch.Tensor:
    import torch

    return torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} and {tuple(b.shape)}")


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    """(n,) → (n, 1); (n, ...) → (n, prod(...)): conv features are compared as flat vectors."""
    return x.reshape(x.shape[0], -1) if x.dim() != 1 else x.reshape(-1, 1)


def symmetric_kl(logits_a, logits_b) -> float:
    """½(KL(p‖q) + KL(q‖p)) of the softmax distributions, averaged over examples (nats).

    Written as ½ Σ (p − q)(log p − log q) with log_softmax, which stays finite for confident logits where
    softmax underflows to 0."""
    a, b = _f64(logits_a), _f64(logits_b)
    _same_shape(a, b, "symmetric_kl")
    la, lb = a.log_softmax(-1), b.log_softmax(-1)
    per_example = 0.5 * ((la.exp() - lb.exp()) * (la - lb)).sum(-1)
    return float(per_example.mean())


def logit_mse(a, b) -> float:
    """Mean squared difference of the logits over all elements."""
    a, b = _f64(a), _f64(b)
    _same_shape(a, b, "logit_mse")
    return float(((a - b) ** 2).mean())


def disagreement(a, b) -> float:
    """Fraction (0..1) of examples whose predicted class (argmax; the first on a tie) differs."""
    a, b = _f64(a), _f64(b)
    _same_shape(a, b, "disagreement")
    return float((a.argmax(-1) != b.argmax(-1)).double().mean())


def linear_cka(x, y) -> float:
    """Linear CKA (Kornblith et al. 2019) of (n, d1) and (n, d2) features: ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F).

    Columns are centred first. The feature-space form costs O(n d²), so many examples are cheap; with more
    features than examples the example-space form ⟨XXᵀ, YYᵀ⟩ / (‖XXᵀ‖ ‖YYᵀ‖), O(n² d), is used instead. 1 for
    identical features, 0 for orthogonal ones, unchanged by rotations and isotropic scaling of either side;
    NaN when either side is constant (no variance to compare)."""
    x, y = _as_matrix(_f64(x)), _as_matrix(_f64(y))
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka: different numbers of examples, {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    if x.shape[1] + y.shape[1] > 2 * x.shape[0]:
        k, l = x @ x.T, y @ y.T
        cross = float((k * l).sum())
        norm = float(k.square().sum().sqrt() * l.square().sum().sqrt())
    else:
        cross = float((y.T @ x).square().sum())
        norm = float((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt())
    return cross / norm if norm > 0 else math.nan


def prediction_measures(logits_a, logits_b, features_a=None, features_b=None) -> dict[str, float]:
    """The output-side measures of one pair: kl, logit_mse, disagreement, cka_logits (and cka_features)."""
    out = {
        "kl": symmetric_kl(logits_a, logits_b),
        "logit_mse": logit_mse(logits_a, logits_b),
        "disagreement": disagreement(logits_a, logits_b),
        "cka_logits": linear_cka(logits_a, logits_b),
    }
    if features_a is not None and features_b is not None:
        out["cka_features"] = linear_cka(features_a, features_b)
    return out


def pairwise_from_gram(gram) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distances and cosines of all pairs from a Gram matrix G[i, j] = <θi, θj> (N×N, float64).

    One pass over the weights builds G (accumulated tensor by tensor), and every pair follows from it:
    ‖θi − θj‖ = sqrt(G_ii + G_jj − 2 G_ij) (clamped at 0 against rounding) and cos = G_ij / sqrt(G_ii G_jj)
    (NaN for a zero vector). Given the Gram of task vectors θi − base, the cosine is the task-vector cosine."""
    import torch

    g = _f64(gram)
    if g.dim() != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"pairwise_from_gram: expected a square matrix, got shape {tuple(g.shape)}")
    g = 0.5 * (g + g.T)
    d = g.diagonal()
    l2 = (d[:, None] + d[None, :] - 2 * g).clamp_min(0).sqrt()
    l2.fill_diagonal_(0.0)
    scale = (d[:, None] * d[None, :]).sqrt()
    cosine = torch.where(scale > 0, g / scale.clamp_min(torch.finfo(torch.float64).tiny), torch.nan)
    return l2, cosine.clamp(-1.0, 1.0)


def _paired(x, y) -> tuple:
    """Two float64 arrays with every position where either value is None or not finite left out."""
    import numpy as np

    xs = np.asarray(x, dtype=np.float64).reshape(-1)  # None becomes NaN
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"correlation: {xs.size} and {ys.size} values")
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep]


def _correlation(x, y, method: str) -> float:
    import warnings

    import numpy as np

    xs, ys = _paired(x, y)
    if xs.size < 3 or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return math.nan
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.spearmanr(xs, ys)[0] if method == "spearman" else stats.pearsonr(xs, ys)[0]
    return float(r)


def spearman(x, y) -> float:
    """Spearman's rank correlation (ties get their mean rank); pairs with a None/NaN value are left out.

    NaN when fewer than 3 pairs remain or either side is constant."""
    return _correlation(x, y, "spearman")


def pearson(x, y) -> float:
    """Pearson's correlation, with the same rules as `spearman` for missing values and degenerate inputs."""
    return _correlation(x, y, "pearson")
