"""The recipe registry (a ladle.registry.Registry of `Recipe`s). A recipe is one file in this folder with one
`@recipe(...)` line; every file is imported.

A recipe is a function `(n, **params) -> plan`, where a plan mixes the N tensors stored under one key
(`Plan`: fixed weights; or any object with `mix(key, tensors, base, accumulate)`, `weights`, `base_weight`,
`notes` and `trace()`, and `elementwise = True` if each output entry depends only on the same entry of the
inputs). Tensors come and go as numpy arrays (ladle.soup.mixing holds the maths). Its typed signature is its only
declaration (see ladle.soup.schema): CLI flags, YAML fields, `ladle recipes` and validation are read from it. A
recipe that needs scores declares a `scorer: Scorer` parameter and imports torch inside its functions, so listing
recipes and cooking fixed-weight soups never import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ladle.registry import Registry
from ladle.soup.schema import Param, params_of, validate

BASE_NONE, BASE_REQUIRED, BASE_OPTIONAL = "none", "required", "optional"


@dataclass
class Plan:
    """Fixed mixing weights: out = base_weight·θ_base + Σ weights[i]·θ_i (the same for every key)."""

    weights: list[float]
    base_weight: float = 0.0
    notes: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # for the manifest's trace (e.g. greedy's decisions)
    elementwise = True  # a weighted sum: any slice of a tensor mixes alone (cook mixes large tensors in blocks)

    def mix(self, key: str, tensors: Callable[[list[int]], Iterable], base, accumulate):
        import numpy as np

        from ladle.soup import mixing

        used = [i for i, w in enumerate(self.weights) if w != 0.0]  # zero weight: never read
        stream = iter(tensors(used))
        weights = [self.weights[i] for i in used]
        if self.base_weight != 0.0:
            stream, weights = _prepend(base, stream), [self.base_weight] + weights
        if not weights:
            return np.zeros(base.shape, dtype=mixing.accumulator_dtype(base.dtype, accumulate))
        return mixing.weighted_sum(stream, weights, accumulate)

    def trace(self) -> dict:
        return self.record


@dataclass
class KeyedPlan(Plan):
    """Mixing weights that differ by key (learned per-layer soups); keys not listed use `weights`."""

    by_key: dict[str, list[float]] = field(default_factory=dict)

    def mix(self, key, tensors, base, accumulate):
        return Plan(self.by_key.get(key, self.weights), self.base_weight).mix(key, tensors, base, accumulate)


class PrecomputedPlan:
    """Tensors merged up front by a recipe that needs every ingredient's statistics first (Fisher, RegMean),
    handed out once as cook asks for them; every other tensor the uniform mean (`weights`)."""

    elementwise = False

    def __init__(self, n: int, merged: dict, record: dict):
        self.weights = [1.0 / n] * n
        self.base_weight = 0.0
        self.merged, self.record = merged, record
        self.notes: list[str] = []

    def mix(self, key, tensors, base, accumulate):
        from ladle.soup.mixing import weighted_sum

        if key in self.merged:
            return self.merged.pop(key)  # memory goes with it
        return weighted_sum(tensors(list(range(len(self.weights)))), self.weights, accumulate)

    def trace(self) -> dict:
        return self.record


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
    parameters: list[Param]
    capabilities: dict[str, object]  # e.g. {"scorer": Scorer}: what the caller must provide
    scores_on: str  # the split a scorer tastes on by default (held-out; season: the target's test split)

    @property
    def needs_scorer(self) -> bool:
        return "scorer" in self.capabilities

    def validate(self, values: dict, where: str = "") -> dict:
        """Parameters checked against the signature and converted; one line naming the first bad one."""
        return validate(self.parameters, values, f"recipe '{self.name}'", where)


# Not importable by `package.module:name`: a recipe is a Recipe built by @recipe, not a bare function.
RECIPES: Registry[Recipe] = Registry("recipe", importable=False)


def recipe(name: str, *, base: str = BASE_NONE, reference: str = "", scores_on: str = "heldout"):
    """Register `fn(n, **params) -> plan` under `name`; its signature declares its parameters."""

    def register(fn):
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        params, capabilities = params_of(fn)
        RECIPES.register(name, Recipe(name, fn, base, summary, reference, params, capabilities, scores_on))
        return fn

    return register


def _register_all() -> None:
    """Import every module of this package: each registers its recipes, so a new recipe is one new file."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_register_all()
