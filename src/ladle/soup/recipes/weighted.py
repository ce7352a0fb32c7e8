from __future__ import annotations

import math
from typing import Annotated

from ladle.errors import LadleError
from ladle.soup.recipes import Plan, recipe


@recipe("weighted", reference="Wortsman et al. 2022, Model soups (arXiv:2203.05482)")
def weighted(n: int, weights: Annotated[list[float], "one non-negative weight per ingredient (W1,W2,…)"],
             normalize: Annotated[bool, "scale the weights to sum to 1"] = True) -> Plan:
    """A weighted mean: one non-negative weight per ingredient, normalised to sum to 1 unless told not to."""
    from ladle.soup.mixing import normalize_weights

    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise LadleError(f"weights: {len(weights)} values for {n} ingredients")
    for i, w in enumerate(weights):
        if not math.isfinite(w) or w < 0:
            raise LadleError(f"weights: value {i + 1} is {w}; weights must be finite and non-negative")
    if math.fsum(weights) == 0:
        raise LadleError("weights: all weights are zero")
    return Plan(normalize_weights(weights) if normalize else weights)
