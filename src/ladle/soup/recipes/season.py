from __future__ import annotations

import itertools
import math
from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import Plan, recipe
from ladle.soup.scoring import Scorer


def simplex_grid(n: int, steps: int) -> list[list[float]]:
    """Every weight vector with entries in {0, 1/steps, …, 1} summing to 1."""
    points = []
    for bars in itertools.combinations(range(steps + n - 1), n - 1):
        edges = (-1,) + bars + (steps + n - 1,)
        points.append([(edges[i + 1] - edges[i] - 1) / steps for i in range(n)])
    return points


@recipe("season", scores_on="test",
        reference="Croce et al. 2023, Seasoning model soups for robustness to adversarial and natural distribution shifts (CVPR)")
def season(n: int, scorer: Scorer,
           shots: Annotated[int, "labelled target examples to search on"] = 20,
           grid: Annotated[int, "simplex grid steps"] = 10,
           samples: Annotated[int, "random simplex points when the grid is too large"] = 200,
           seed: Annotated[int, "seed of the shots and of the random points"] = 0) -> Plan:
    """Seasoning: search the mixing weights on a few labelled target examples (grid or random simplex points)."""
    import torch

    for name, value in (("grid", grid), ("samples", samples)):
        if value < 1:
            raise LadleError(f"{name}: must be at least 1, got {value}")
    scorer.use_shots(shots, seed)
    if math.comb(grid + n - 1, n - 1) <= samples:
        candidates, how = simplex_grid(n, grid), f"simplex grid, step 1/{grid}"
    else:
        with torch.random.fork_rng():  # seeded, without touching the caller's random state
            torch.manual_seed(seed)
            random = torch.distributions.Dirichlet(torch.ones(n)).sample((samples,))
        vertices = [[float(i == j) for j in range(n)] for i in range(n)]
        candidates = vertices + [[1.0 / n] * n] + [[round(v, 4) for v in row] for row in random.tolist()]
        how = f"{samples} random simplex points + vertices + uniform"
    if not candidates:
        raise LadleError("season: no candidate weights")
    results = []
    for w in candidates:
        m = scorer.soup_metrics(w)
        results.append((m.accuracy, -m.nll, w))
    best = max(results, key=lambda r: (r[0], r[1]))
    return Plan(best[2], record={"season": {
        "shots": shots, "search": how, "split": scorer.split, "data": scorer.data_record(), "candidates": len(candidates),
        "chosen": {"weights": best[2], "accuracy": best[0], "nll": -best[1]},
        "top": sorted(([a, -nl, w] for a, nl, w in results), key=lambda r: (-r[0], r[1]))[:10]}})
