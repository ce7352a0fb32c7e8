"""Low-rank maths of LoRA soups: small pure functions on numpy arrays (no I/O, no models).

A LoRA update is ΔW = B·A (B: fan_out × r, A: r × fan_in; the scaling folded into B). A weighted sum of updates
is exactly the update of the concatenated factors, Σ wᵢ·BᵢAᵢ = [w₁B₁ … wₙBₙ]·[A₁; …; Aₙ], so a linear soup of
adapters is an adapter of rank Σ rᵢ. A rank-r adapter of any update is its truncated SVD (Eckart–Young: the best
rank-r approximation in Frobenius norm), computed from the factors when it has them (QR of both, then the SVD of
an R × R core) and by a seeded randomised SVD for large dense updates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

OVERSAMPLE = 10  # extra columns of the randomised range finder
POWER_ITERATIONS = 2
DENSE_LIMIT = 1 << 22  # entries: a dense update smaller than this (or too thin to gain) gets numpy's exact SVD


def concat_factors(pairs: Iterable[tuple[np.ndarray, np.ndarray]], weights: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of Σ wᵢ·BᵢAᵢ: the Aᵢ stacked, the wᵢ·Bᵢ side by side (pairs are (Aᵢ, Bᵢ), 2-D)."""
    a_parts, b_parts = [], []
    for (a, b), w in zip(pairs, weights):
        a_parts.append(a)
        b_parts.append(b * np.asarray(w, dtype=b.dtype))
    return np.concatenate(a_parts, axis=0), np.concatenate(b_parts, axis=1)


def split_singular(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of the rank-`rank` truncation U·S·Vᵀ, the singular values shared as √S on each side."""
    root = np.sqrt(s[:rank])
    return root[:, None] * vt[:rank], u[:, :rank] * root[None, :]


def relative_error(total_sq: float, kept: np.ndarray) -> float:
    """‖ΔW − approximation‖_F / ‖ΔW‖_F for an orthogonal projection keeping singular values `kept`."""
    if total_sq <= 0.0:
        return 0.0
    return float(np.sqrt(max(total_sq - float(np.sum(np.square(kept, dtype=np.float64))), 0.0) / total_sq))


def svd_of_factors(a: np.ndarray, b: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-`rank` (A, B) of ΔW = B·A without forming ΔW: B = Q_b·R_b, Aᵀ = Q_a·R_a, SVD of R_b·R_aᵀ (R × R).
    Returns the factors and the relative Frobenius error."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    qb, rb = np.linalg.qr(b64)
    qa, ra = np.linalg.qr(a64.T)
    u, s, vt = np.linalg.svd(rb @ ra.T)
    kept = min(rank, s.size)
    new_a, new_b = split_singular(qb @ u, s, vt @ qa.T, kept)
    return new_a.astype(a.dtype), new_b.astype(b.dtype), relative_error(float(np.sum(s * s)), s[:kept])


def truncated_svd(delta: np.ndarray, rank: int, seed: int | str = 0) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Rank-`rank` (A, B) of a dense 2-D update, its relative Frobenius error and the method ('exact' or
    'randomised'). Large updates get a randomised SVD (Halko et al. 2011: Gaussian range finder with oversampling
    and power iterations), seeded by `seed`, so the same update gives the same bytes."""
    m = np.asarray(delta)
    work = m.astype(np.float64) if m.dtype == np.float64 else m.astype(np.float32, copy=False)
    total_sq = float(np.sum(np.square(work, dtype=np.float64)))
    small = min(m.shape)
    if m.size < DENSE_LIMIT or small <= 2 * (rank + OVERSAMPLE):
        u, s, vt = np.linalg.svd(work, full_matrices=False)
        kept = min(rank, s.size)
        a, b = split_singular(u, s, vt, kept)
        return a, b, relative_error(total_sq, s[:kept]), "exact"
    rng = np.random.default_rng(_seed(seed))
    q = _orthonormal(work @ rng.standard_normal((m.shape[1], rank + OVERSAMPLE)).astype(work.dtype))
    for _ in range(POWER_ITERATIONS):  # sharpen the spectrum: (M Mᵀ)^q M Ω, re-orthonormalised each time
        q = _orthonormal(work @ _orthonormal(work.T @ q))
    u_small, s, vt = np.linalg.svd(q.T @ work, full_matrices=False)
    a, b = split_singular(q @ u_small, s, vt, rank)
    return a, b, relative_error(total_sq, s[:rank]), "randomised"


def factor_inner(a1: np.ndarray, b1: np.ndarray, a2: np.ndarray, b2: np.ndarray) -> float:
    """⟨B₁A₁, B₂A₂⟩_F = tr((B₁ᵀB₂)(A₂A₁ᵀ)): r × r products, ΔW never formed."""
    left = b1.astype(np.float64).T @ b2.astype(np.float64)
    right = a2.astype(np.float64) @ a1.astype(np.float64).T
    return float(np.sum(left * right.T))


def factor_gram(updates: list[tuple[np.ndarray, np.ndarray] | None]) -> np.ndarray:
    """The Gram matrix ⟨BᵢAᵢ, BⱼAⱼ⟩_F (float64) of updates given as (A, B) factors, by `factor_inner`; None is no
    update (a zero row and column)."""
    n = len(updates)
    gram = np.zeros((n, n))
    for i, p in enumerate(updates):
        for j in range(i, n):
            if p is not None and updates[j] is not None:
                gram[i, j] = gram[j, i] = factor_inner(*p, *updates[j])
    return gram


def _orthonormal(y: np.ndarray) -> np.ndarray:
    return np.linalg.qr(y)[0]


def _seed(seed: int | str) -> int:
    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "little")
