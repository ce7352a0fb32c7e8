"""DELLA-Merging: MAGPRUNE drops each task-vector entry with a probability that falls with its magnitude rank and
rescales the survivors by 1/(1 − pᵢ), then merges.

`della`: TIES' sign election and disjoint mean of the pruned task vectors, θ = θ_base + λ·merged (mergekit's
`della`, with the mean). `della-linear`: θ = θ_base + λ·Σᵢ pruned τᵢ. Drop probabilities run linearly over the
magnitude ranks from 1 − density + ε (smallest) to 1 − density − ε (largest). The draws are seeded per (seed,
tensor, ingredient) as DARE's are, so the same command gives the same bytes.
"""

from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, recipe

REFERENCE = "Deep et al. 2024, DELLA-Merging (arXiv:2406.11617)"


class DellaPlan:
    def __init__(self, n: int, density: float, epsilon: float, lambda_: float, seed: int, ties: bool):
        self.density, self.epsilon, self.lambda_, self.seed, self.ties = density, epsilon, lambda_, seed, ties
        self.weights = [lambda_ / n if ties else lambda_] * n
        self.base_weight = None
        self.notes: list[str] = []
        self.per_key: dict[str, dict[str, int]] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import accumulator_dtype, dare_generator, della_drop, merge_deltas, task_vectors

        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        indices = list(range(len(self.weights)))

        def pruned():  # the same draws every pass: each generator is seeded afresh
            for i, tau in zip(indices, task_vectors(tensors(indices), base, accumulate)):
                yield della_drop(tau, self.density, self.epsilon, dare_generator(self.seed, f"della\0{key}", i))

        merged, counts = merge_deltas(base, pruned, self.lambda_, self.ties, accumulate)
        if counts is not None:
            self.per_key[key] = counts
        return merged

    def trace(self) -> dict:
        della = {"density": self.density, "epsilon": self.epsilon, "seed": self.seed}
        return {"della": della, **({"ties": self.per_key} if self.ties else {})}


def check_della(density: float, epsilon: float) -> None:
    if not 0.0 < density <= 1.0:
        raise LadleError(f"density: must be in (0, 1], got {density}")
    if not 0.0 <= epsilon < density or epsilon > 1.0 - density:
        raise LadleError(f"epsilon: drop probabilities 1 − density ± ε must stay in [0, 1): need 0 ≤ ε < density "
                         f"and ε ≤ 1 − density, got ε = {epsilon} with density {density}")


DENSITY = Annotated[float, "expected fraction of each task vector kept"]
EPSILON = Annotated[float, "spread of the drop probabilities around 1 − density, by magnitude rank"]
SEED = Annotated[int, "random seed of the drops (one stream per tensor and ingredient)"]


@recipe("della", base=BASE_REQUIRED, reference=REFERENCE)
def della(n: int, density: DENSITY = 0.5, epsilon: EPSILON = 0.1,
          lambda_: Annotated[float, "scale of the merged task vector"] = 1.0, seed: SEED = 0) -> DellaPlan:
    """DELLA: drop entries by magnitude rank (MAGPRUNE) and rescale, elect signs, average the agreeing entries."""
    check_della(density, epsilon)
    return DellaPlan(n, density, epsilon, lambda_, seed, ties=True)


@recipe("della-linear", base=BASE_REQUIRED, reference=REFERENCE)
def della_linear(n: int, density: DENSITY = 0.5, epsilon: EPSILON = 0.1,
                 lambda_: Annotated[float, "scale of the summed task vectors"] = 1.0, seed: SEED = 0) -> DellaPlan:
    """DELLA's MAGPRUNE on each task vector, then their sum scaled by λ, added to the base."""
    check_della(density, epsilon)
    return DellaPlan(n, density, epsilon, lambda_, seed, ties=False)
