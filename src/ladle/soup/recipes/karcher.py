from __future__ import annotations

from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import BASE_NONE, recipe


class KarcherPlan:
    """Per tensor, the weighted Karcher mean of the ingredients' directions times their weighted mean norm.
    `weights` are the normalised ones (what it reduces to when every tensor points the same way)."""

    def __init__(self, weights: list[float], tolerance: float, max_iterations: int):
        total = sum(weights)
        self.weights = [w / total for w in weights]
        self.base_weight = 0.0
        self.tolerance, self.max_iterations = tolerance, max_iterations
        self.per_key: dict[str, dict] = {}

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import karcher_mean

        indices = list(range(len(self.weights)))
        merged, iterations, converged = karcher_mean(lambda: tensors(indices), self.weights, accumulate,
                                                     self.tolerance, self.max_iterations)
        self.per_key[key] = {"iterations": iterations, "converged": converged}
        return merged

    @property
    def notes(self) -> list[str]:
        unconverged = [k for k, v in self.per_key.items() if not v["converged"]]
        return [f"{len(unconverged)} tensors did not converge in {self.max_iterations} iterations (e.g. "
                f"'{unconverged[0]}')"] if unconverged else []

    def trace(self) -> dict:
        return {"karcher": self.per_key}


@recipe("karcher", base=BASE_NONE, reference="Karcher 1977, Riemannian center of mass; as in mergekit's karcher")
def karcher(n: int, weights: Annotated[list[float], "one non-negative weight per ingredient (default: equal)"] = (),
            tolerance: Annotated[float, "stop when the mean tangent vector is shorter than this"] = 1e-7,
            max_iterations: Annotated[int, "at most this many fixed-point iterations per tensor"] = 100) -> KarcherPlan:
    """Karcher mean: per tensor, the weighted mean direction on the sphere (geodesic), times the mean norm."""
    weights = [float(w) for w in weights] or [1.0] * n
    if len(weights) != n:
        raise LadleError(f"weights: {len(weights)} values for {n} ingredients")
    if any(w < 0 for w in weights) or sum(weights) == 0:
        raise LadleError("weights: must be non-negative and not all zero")
    if tolerance <= 0 or max_iterations < 1:
        raise LadleError(f"tolerance must be positive and max_iterations at least 1, got {tolerance} and {max_iterations}")
    return KarcherPlan(weights, tolerance, max_iterations)
