"""DARE: drop each task-vector entry with probability p, rescale the rest by 1/(1 − p) (Yu et al. 2024).

`dare` sums the dropped task vectors (mergekit's `dare_linear`, whose `normalize` defaults to false):
θ = θ_base + λ·Σᵢ DARE(τᵢ), so p = 0 is task arithmetic. `dare-ties` follows DARE with TIES' sign election
and disjoint mean (no magnitude trim): θ = θ_base + λ·mean of the agreeing DARE(τᵢ). mergekit's `dare_ties`
sums the agreeing entries by default instead (normalize: false); here it is the mean, as in TIES-Merging.
The default p = 0.9 is the paper's headline drop rate; mergekit configurations often keep more (density 0.5).
The masks are seeded per (seed, key, ingredient index): the same command gives the same bytes (they are the masks
torch's CPU generator draws from the same seed), and adding an ingredient at the end changes no other one's mask.
"""

from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, recipe

REFERENCE = "Yu et al. 2024, Language Models are Super Mario (DARE, arXiv:2311.03099)"


class DarePlan:
    """Per tensor, the dropped task vectors are summed (`ties=False`) or sign-elected and averaged (`ties=True`).

    `weights` are what the recipe reduces to in expectation and with every sign agreeing (dare: λ each, base
    1 − nλ; dare-ties: λ/n each); the base weight really depends on the draw, hence None."""

    def __init__(self, n: int, p: float, lambda_: float, seed: int, ties: bool):
        self.p, self.lambda_, self.seed, self.ties = p, lambda_, seed, ties
        self.weights = [lambda_ / n if ties else lambda_] * n
        self.base_weight = None
        self.notes: list[str] = []
        self.entries = self.kept = 0
        self.per_key: dict[str, dict[str, int]] = {}

    def mix(self, key, tensors, base, accumulate):
        import numpy as np

        from ladle.soup.mixing import accumulator_dtype, dare_drop, dare_generator, merge_deltas, task_vectors

        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        indices = list(range(len(self.weights)))

        def dropped():  # the same masks every time it is called: each generator is seeded afresh
            for i, tau in zip(indices, task_vectors(tensors(indices), base, accumulate)):
                d = dare_drop(tau, self.p, dare_generator(self.seed, key, i))
                self.entries += d.size
                self.kept += int(np.count_nonzero(d))
                yield d

        merged, counts = merge_deltas(base, dropped, self.lambda_, self.ties, accumulate)
        if counts is not None:
            self.per_key[key] = counts
        return merged

    def trace(self) -> dict:
        passes = 2 if self.ties else 1  # dare-ties reads (and drops) every task vector twice
        dare = {"p": self.p, "seed": self.seed, "entries": self.entries // passes, "kept_nonzero": self.kept // passes}
        return {"dare": dare, "ties": self.per_key} if self.ties else {"dare": dare}


def _check(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise LadleError(f"p: must be in [0, 1), got {p}")


P = Annotated[float, "probability of dropping each task-vector entry; the kept ones are scaled by 1/(1-p)"]
SEED = Annotated[int, "random seed of the drop masks (one stream per tensor and ingredient)"]


@recipe("dare", base=BASE_REQUIRED, reference=REFERENCE)
def dare(n: int, p: P = 0.9, lambda_: Annotated[float, "scale of the summed task vectors"] = 1.0,
         seed: SEED = 0) -> DarePlan:
    """DARE: randomly drop task-vector entries, rescale the rest, add the sum to the base (mergekit dare_linear)."""
    _check(p)
    return DarePlan(n, p, lambda_, seed, ties=False)


@recipe("dare-ties", base=BASE_REQUIRED, reference=REFERENCE)
def dare_ties(n: int, p: P = 0.9, lambda_: Annotated[float, "scale of the merged task vector"] = 1.0,
              seed: SEED = 0) -> DarePlan:
    """DARE then TIES: randomly drop and rescale task-vector entries, elect signs, average the agreeing ones."""
    _check(p)
    return DarePlan(n, p, lambda_, seed, ties=True)
