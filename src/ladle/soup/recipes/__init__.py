"""The recipe registry. A recipe is one file with one `@recipe(...)` line; this module imports them all.

A recipe turns its parameters into a `Plan`: the rule that mixes the N tensors stored under one key.
Evaluation-driven recipes (greedy, learned, seasoning) take an `evaluator` parameter and ask it for
scores before returning their plan.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ladle.soup import mixing

BASE_NONE, BASE_REQUIRED, BASE_OPTIONAL = "none", "required", "optional"


@dataclass
class Plan:
    """Fixed mixing weights: out = base_weight·θ_base + Σ weights[i]·θ_i (the same for every key)."""

    weights: list[float]
    base_weight: float = 0.0
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # for the manifest's trace (e.g. greedy's decisions)

    def mix(self, key: str, tensors: Callable[[list[int]], Iterable[torch.Tensor]], base, accumulate) -> torch.Tensor:
        used = [i for i, w in enumerate(self.weights) if w != 0.0]  # zero weight: never read
        stream = iter(tensors(used))
        weights = [self.weights[i] for i in used]
        if self.base_weight != 0.0:
            stream, weights = _prepend(base, stream), [self.base_weight] + weights
        if not weights:
            return torch.zeros_like(base, dtype=mixing.accumulator_dtype(base.dtype, accumulate))
        return mixing.weighted_sum(stream, weights, accumulate)

    def trace(self) -> dict:
        return self.record


@dataclass
class KeyedPlan(Plan):
    """Mixing weights that differ by key (learned per-layer soups); keys not listed use `weights`."""

    by_key: dict[str, list[float]] = field(default_factory=dict)

    def mix(self, key, tensors, base, accumulate):
        return Plan(self.by_key.get(key, self.weights), self.base_weight).mix(key, tensors, base, accumulate)


def _prepend(first, rest):
    yield first
    yield from rest


@dataclass(frozen=True)
class Recipe:
    name: str
    make_plan: Callable[..., Plan]
    base: str
    summary: str
    reference: str

    @property
    def parameters(self) -> list[str]:
        return [p for p in inspect.signature(self.make_plan).parameters if p != "n"]


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, *, base: str = BASE_NONE, reference: str = ""):
    """Register `fn(n, **params) -> Plan` under `name`."""

    def register(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        RECIPES[name] = Recipe(name, fn, base, summary, reference)
        return fn

    return register


from ladle.soup.recipes import greedy, interpolate, learned, model_stock, season, uniform, weighted  # noqa: E402,F401  (each registers itself)
