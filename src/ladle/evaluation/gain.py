"""Soup gain, defined once: acc(soup) − max acc(ingredients), on one split or column."""

from __future__ import annotations

import math
from collections.abc import Iterable


def best_single(ingredient_accuracies: Iterable[float]) -> float:
    """The best ingredient's accuracy (NaN if there is none or none was measured)."""
    values = [a for a in ingredient_accuracies if a == a]
    return max(values, default=math.nan)


def soup_gain(accuracy: float, ingredient_accuracies: Iterable[float]) -> float:
    """acc(soup) − max acc(ingredients) (Wortsman et al. 2022); ensembles and other models alike."""
    return accuracy - best_single(ingredient_accuracies)
