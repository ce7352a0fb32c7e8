from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_REQUIRED, recipe


class TiesPlan:
    """Per tensor: trim each task vector to its largest entries, elect a sign per entry, average the agreeing
    entries (two passes over the ingredients, so memory stays flat in their number); θ_base + λ·merged.

    `weights` are what TIES reduces to when nothing is trimmed and every sign agrees (λ/n each, base 1 − λ);
    the base weight really depends on the entry, hence None."""

    def __init__(self, n: int, density: float, lambda_: float):
        self.density, self.lambda_ = density, lambda_
        self.weights = [lambda_ / n] * n
        self.base_weight = None
        self.notes: list[str] = []
        self.per_key: dict[str, dict[str, int]] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import accumulator_dtype, merge_deltas, task_vectors, ties_cut, ties_trim

        base = base.astype(accumulator_dtype(base.dtype, accumulate), copy=False)
        indices = list(range(len(self.weights)))
        cuts: dict[int, tuple[float, int] | None] = {}  # found in the first pass, reused in the second

        def trimmed():
            for i, tau in zip(indices, task_vectors(tensors(indices), base, accumulate)):
                if i not in cuts:
                    cuts[i] = ties_cut(tau, self.density)
                yield ties_trim(tau, self.density, cuts[i])

        merged, self.per_key[key] = merge_deltas(base, trimmed, self.lambda_, True, accumulate)
        return merged

    def trace(self) -> dict:
        return {"ties": self.per_key}


def check_density(density: float) -> None:
    if not 0.0 < density <= 1.0:
        raise LadleError(f"density: must be in (0, 1], got {density}")


@recipe("ties", base=BASE_REQUIRED, reference="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)")
def ties(n: int, density: Annotated[float, "fraction of each task vector kept, by magnitude (per tensor)"] = 0.2,
         lambda_: Annotated[float, "scale of the merged task vector"] = 1.0) -> TiesPlan:
    """TIES-Merging: trim task vectors to their largest entries, elect signs, average the agreeing entries."""
    check_density(density)
    return TiesPlan(n, density, lambda_)
