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


def _missing(*values) -> bool:
    return any(v is None or v != v for v in values)


def accuracy_gain(soup: float | None, a: float | None, b: float | None) -> float | None:
    """Accuracy gain of a pair's soup: acc(soup) − max(acc A, acc B), in the accuracies' units.

    None when any figure was not measured (None or NaN): a collapsed soup often has no corrupted figure."""
    if _missing(soup, a, b):
        return None
    return soup - max(a, b)


def loss_gain(soup_loss: float | None, loss_a: float | None, loss_b: float | None) -> float | None:
    """Loss gain of a pair's soup: min(loss A, loss B) − loss(soup), positive when the soup is better.

    None when any loss was not measured."""
    if _missing(soup_loss, loss_a, loss_b):
        return None
    return min(loss_a, loss_b) - soup_loss


def collapse_threshold(num_classes: int | None) -> float:
    """The accuracy (percent) below which a soup counts as collapsed: 5 × chance = 500 / classes, the paper's
    5 % at 100 classes (50 % at 10), but never above halfway from chance to 100 % (so 75 % for 2 classes, where
    5 × chance would call every soup collapsed); 5 % when the class count is unknown."""
    if num_classes is None:
        return 5.0
    if num_classes < 1:
        raise ValueError(f"collapse_threshold: num_classes must be at least 1, got {num_classes}")
    chance = 100.0 / num_classes
    return min(5 * chance, (chance + 100.0) / 2)
