"""Model Breadcrumbs: per tensor and ingredient, mask the task vector to a band of magnitudes — the largest
(outliers) and the smallest (noise) dropped — then add the masked task vectors to the base.

`breadcrumbs`: θ = θ_base + λ·Σᵢ mask(τᵢ). `breadcrumbs-ties`: the same masks, then TIES' sign election and
disjoint mean (mergekit's `breadcrumbs_ties`, with the mean rather than its default sum). With n entries,
round(γ·n) are removed from the top and the next round(density·n) kept, equal magnitudes ordered by index.
"""

from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, recipe

REFERENCE = "Davari & Belilovsky 2023, Model Breadcrumbs (arXiv:2312.06795)"


class BreadcrumbsPlan:
    """Per tensor: each task vector masked (breadcrumbs_mask), then summed (`ties=False`) or sign-elected and
    averaged (`ties=True`); θ_base + λ·merged. `weights` are what it reduces to with nothing masked (λ each, or
    λ/n with TIES)."""

    def __init__(self, n: int, density: float, gamma: float, lambda_: float, ties: bool):
        self.density, self.gamma, self.lambda_, self.ties = density, gamma, lambda_, ties
        self.weights = [lambda_ / n if ties else lambda_] * n
        self.base_weight = None
        self.notes: list[str] = []
        self.per_key: dict[str, dict[str, int]] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import accumulator_dtype, breadcrumbs_mask, merge_deltas, task_vectors

        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        indices = list(range(len(self.weights)))

        def masked():
            for tau in task_vectors(tensors(indices), base, accumulate):
                yield breadcrumbs_mask(tau, self.gamma, self.density)

        merged, counts = merge_deltas(base, masked, self.lambda_, self.ties, accumulate)
        if counts is not None:
            self.per_key[key] = counts
        return merged

    def trace(self) -> dict:
        return {"breadcrumbs": {"density": self.density, "gamma": self.gamma}, **({"ties": self.per_key} if self.ties else {})}


def check_band(density: float, gamma: float) -> None:
    if not 0.0 < density <= 1.0:
        raise LadleError(f"density: must be in (0, 1], got {density}")
    if not 0.0 <= gamma < 1.0:
        raise LadleError(f"gamma: must be in [0, 1), got {gamma}")
    if gamma + density > 1.0 + 1e-12:
        raise LadleError(f"gamma + density: {gamma} + {density} is more than the whole task vector (at most 1)")


DENSITY = Annotated[float, "fraction of each task vector kept, after the outliers (per tensor)"]
GAMMA = Annotated[float, "fraction of largest-magnitude entries removed as outliers (per tensor)"]


@recipe("breadcrumbs", base=BASE_REQUIRED, reference=REFERENCE)
def breadcrumbs(n: int, density: DENSITY = 0.9, gamma: GAMMA = 0.01,
                lambda_: Annotated[float, "scale of the summed masked task vectors"] = 1.0) -> BreadcrumbsPlan:
    """Model Breadcrumbs: drop each task vector's outliers and smallest entries, add the rest to the base."""
    check_band(density, gamma)
    return BreadcrumbsPlan(n, density, gamma, lambda_, ties=False)


@recipe("breadcrumbs-ties", base=BASE_REQUIRED, reference=REFERENCE + "; Yadav et al. 2023, TIES-Merging")
def breadcrumbs_ties(n: int, density: DENSITY = 0.9, gamma: GAMMA = 0.01,
                     lambda_: Annotated[float, "scale of the merged task vector"] = 1.0) -> BreadcrumbsPlan:
    """Breadcrumbs' masks, then TIES' sign election and mean of the agreeing entries."""
    check_band(density, gamma)
    return BreadcrumbsPlan(n, density, gamma, lambda_, ties=True)
