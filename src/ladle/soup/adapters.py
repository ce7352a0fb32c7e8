"""Soups of LoRA adapters, mixed in update space: each module's ΔW (or its factors), the base kept whole.

A soup of adapters is base + mix(ΔW₁ … ΔWₙ) per module, the recipe applied to the updates (a module an adapter
does not adapt is a zero update). Three outputs:
- an exact adapter (linear recipes: uniform, weighted, task arithmetic, and the weights greedy / learned / season
  find): the factors concatenated, r_out = Σ rᵢ, weights and scalings folded into B, alpha = r (scaling 1);
- a rank-`rank` adapter (any recipe): the truncated SVD of each mixed ΔW, its relative error in the manifest;
- a merged model (`merge_into`, or when a full fine-tuned checkpoint is among the ingredients): base + mixed ΔW,
  streamed tensor by tensor from the base.
Evaluation-driven recipes taste `UpdatedModel`s: the base with one adapter's update, read key by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ladle.errors import LadleError
from ladle.io.checkpoints import Ingredient, TensorInfo, open_ingredient
from ladle.io.dtypes import is_float, numpy_dtype, to_torch
from ladle.io.lora import ADAPTER_CONFIG, LoraAdapter, is_adapter
from ladle.soup import lowrank
from ladle.soup.mixing import accumulator_dtype, converted, weighted_sum

ADAPTER_WEIGHTS_NAME = "adapter_model"
SUM_TOLERANCE = 1e-9


@dataclass
class Updates:
    """One ingredient as updates of a base: a LoRA adapter's ΔW per module (and tensors it saves whole), or a
    full fine-tuned checkpoint's θ − base for every floating tensor."""

    name: str
    adapter: LoraAdapter | None = None
    checkpoint: Ingredient | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return (self.adapter or self.checkpoint).nbytes

    def changes(self, key: str) -> bool:
        if self.adapter is not None:
            return key in self.adapter.modules or key in self.adapter.full
        return key in self.checkpoint.keys() and is_float(self.checkpoint.info(key).dtype)

    def has_factors(self, key: str) -> bool:
        return self.adapter is not None and key in self.adapter.modules and key not in self.adapter.full

    def update(self, key: str, base: Ingredient | None, accumulate) -> np.ndarray:
        """This ingredient's ΔW of `key` in the base's layout (θ − base for tensors held whole)."""
        if self.has_factors(key):
            return self.adapter.delta(key, accumulate)
        whole = self.adapter.full_tensor(key) if self.adapter is not None else self.checkpoint.array(key)
        if base is None:
            raise LadleError("saved whole, not as factors: mixing it needs the base (--base)", file=self.name, key=key)
        return whole.astype(accumulate) - base.array(key).astype(accumulate)


def open_updates(source, base=None) -> Updates:
    """An adapter or a full checkpoint; an adapter of a Hugging Face folder `base` keyed by the base file's names."""
    if isinstance(source, Updates):
        return source
    if is_adapter(source):
        adapter = LoraAdapter(source)
        if isinstance(base, (str, Path)) and (Path(base) / "config.json").is_file() \
                and not set(adapter.modules) <= set(open_ingredient(base).keys()):
            from ladle.models.hf_names import folder_checkpoint_names  # torch and transformers: only when needed

            adapter.rename(folder_checkpoint_names(str(base)))
        return Updates(adapter.name, adapter=adapter, files=adapter.files, notes=adapter.notes)
    checkpoint = open_ingredient(source)
    return Updates(checkpoint.name, checkpoint=checkpoint, files=checkpoint.files, notes=checkpoint.notes)


def open_on_base(source, base=None):
    """A checkpoint as a lazy Ingredient; a LoRA adapter as the model it makes of `base` (required then): what
    taste, grid and the pair measures evaluate."""
    if not is_adapter(source):
        return open_ingredient(source)
    if base is None:
        raise LadleError("a LoRA adapter is evaluated on the model it updates: give it with --base", file=source)
    base_ing = open_ingredient(base)
    updates = open_updates(source, base)
    check_fits([updates], base_ing)
    return UpdatedModel(base_ing, updates)


def any_adapter(sources) -> bool:
    return any(isinstance(s, Updates) or is_adapter(s) for s in sources)


def weights_for(plan, key: str) -> list[float] | None:
    """A linear plan's weights for this key (None: the recipe does not mix linearly)."""
    from ladle.soup.recipes import KeyedPlan, Plan
    from ladle.soup.recipes.task_arithmetic import TaskArithmeticPlan

    if isinstance(plan, KeyedPlan):
        return list(plan.by_key.get(key, plan.weights))
    if isinstance(plan, (Plan, TaskArithmeticPlan)):
        return list(plan.weights)
    return None


class UpdatedModel:
    """The base with one ingredient's updates, as a lazy Ingredient (what evaluation-driven recipes taste): keys,
    shapes and dtypes are the base's; a changed tensor is base + ΔW in the base's dtype, others the base's own."""

    def __init__(self, base: Ingredient, updates: Updates):
        self.base, self.updates = base, updates
        self.name = updates.name
        self.files = [*updates.files, *base.files]
        self.notes = updates.notes

    @property
    def path(self) -> str:
        return self.name

    def keys(self) -> list[str]:
        return self.base.keys()

    def info(self, key: str) -> TensorInfo:
        return self.base.info(key)

    def array(self, key: str) -> np.ndarray:
        base = self.base.array(key)
        if not self.updates.changes(key):
            return base
        if self.updates.adapter is not None and key in self.updates.adapter.full:
            return self.updates.adapter.full_tensor(key)
        if self.updates.checkpoint is not None:
            return self.updates.checkpoint.array(key)
        acc = accumulator_dtype(base.dtype)
        return converted(base.astype(acc) + self.updates.update(key, self.base, acc), base.dtype)

    def get(self, key: str):
        return to_torch(self.array(key))

    def release(self, key: str) -> None:
        self.base.release(key)

    @property
    def nbytes(self) -> int:
        return self.base.nbytes


def updated_soup_state(models: list[UpdatedModel], weights: list[float], keys: list[str],
                       by_key: dict | None = None) -> dict:
    """base + Σ wᵢ·ΔWᵢ per key, as torch tensors: an unchanged tensor is the base's own (no copy), so between
    candidate soups only the adapted tensors change."""
    base = models[0].base
    state = {}
    for key in keys:
        w = (by_key or {}).get(key, weights)
        holders = [i for i, m in enumerate(models) if w[i] != 0.0 and m.updates.changes(key)]
        original = base.array(key)
        if not holders or not is_float(base.info(key).dtype):
            state[key] = to_torch(original)
            continue
        acc = accumulator_dtype(original.dtype)
        delta = weighted_sum((models[i].updates.update(key, base, acc) for i in holders), [w[i] for i in holders], acc)
        state[key] = to_torch(converted(original.astype(acc) + delta, original.dtype))
    return state


def check_fits(ups: list[Updates], base: Ingredient | None) -> None:
    """Every adapted module has one shape across adapters, and the base (when given) has that tensor and shape."""
    seen: dict[str, tuple[tuple, str]] = {}
    for up in ups:
        if up.adapter is None:
            continue
        for key, module in up.adapter.modules.items():
            if base is not None:
                if key not in base.keys():
                    raise LadleError(f"module '{module.name}': the base has no tensor '{key}' to update "
                                     f"(is {up.adapter.base_name or 'its base'} the base?)", file=up.name)
                shape = tuple(base.info(key).shape)
                if shape != module.shape:
                    hint = "; set fan_in_fan_out to match the base's layout" if shape == module.shape[::-1] else ""
                    raise LadleError(f"module '{module.name}': its update is {list(module.shape)}, the base weight "
                                     f"'{key}' is {list(shape)}{hint}", file=up.name)
            elif key in seen and seen[key][0] != module.shape:
                raise LadleError(f"module '{module.name}': its update is {list(module.shape)}, but "
                                 f"{seen[key][1]}'s is {list(seen[key][0])}", file=up.name)
            seen.setdefault(key, (module.shape, up.name))
        for key in up.adapter.full:
            if base is not None and key in base.keys() and tuple(base.info(key).shape) != \
                    tuple(up.adapter.weights.info(up.adapter.full[key]).shape):
                raise LadleError(f"saved whole with shape {list(up.adapter.weights.info(up.adapter.full[key]).shape)}, "
                                 f"the base's is {list(base.info(key).shape)}", file=up.name, key=key)
    if base is not None:
        for up in ups:
            if up.checkpoint is not None:
                for key in base.keys():
                    if key not in up.checkpoint.keys():
                        raise LadleError("a full checkpoint lacks a tensor of the base", file=up.name, key=key)
                    if up.checkpoint.info(key).shape != base.info(key).shape:
                        raise LadleError(f"shape {list(up.checkpoint.info(key).shape)}, the base's is "
                                         f"{list(base.info(key).shape)}", file=up.name, key=key)


def check_bases(ups: list[Updates], base) -> None:
    """Adapters made for different base models are refused unless the base is named."""
    names = {}
    for up in ups:
        if up.adapter is not None:
            names.setdefault(up.adapter.base_name, up.name)
    if len(names) > 1 and base is None:
        (a, fa), (b, fb) = list(names.items())[:2]
        raise LadleError(f"base_model_name_or_path: '{b}' differs from {fa}'s '{a}': adapters of different bases "
                         "are souped only when --base names the base they all apply to", file=Path(fb) / ADAPTER_CONFIG)


class AdapterMix:
    """What one soup of updates computes, key by key: the plan's mixture of the ingredients' updates."""

    def __init__(self, plan, ups: list[Updates], base: Ingredient | None, accumulate, uses_base: bool):
        self.plan, self.ups, self.base, self.accumulate, self.uses_base = plan, ups, base, accumulate, uses_base
        self.errors: dict[str, float] = {}  # low-rank outputs: each module's relative Frobenius error
        self.methods: dict[str, str] = {}  # and how its SVD was computed
        self.ranks: dict[str, int] = {}  # adapter outputs: each module's rank
        self.saved_whole: list[str] = []  # adapter outputs: tensors saved whole
        self.dropped: list[str] = []  # modules whose every update has zero weight

    def module(self, key: str):
        """The LoraModule of `key` (its kind, shape and layout) from the first adapter that adapts it."""
        return next(up.adapter.modules[key] for up in self.ups if up.has_factors(key))

    def holders(self, key: str) -> list[int]:
        return [i for i, up in enumerate(self.ups) if up.changes(key)]

    def exact_factors(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(A, B) of the linear mix of this module's factors; None when the plan is not linear here, or a holder
        holds the tensor whole."""
        w = weights_for(self.plan, key)
        holders = [i for i in self.holders(key) if w is not None and w[i] != 0.0]
        if w is None or not all(self.ups[i].has_factors(key) for i in self.holders(key)):
            return None
        if not holders:
            return None
        return lowrank.concat_factors((self.ups[i].adapter.factors(key) for i in holders), [w[i] for i in holders])

    def delta(self, key: str) -> np.ndarray:
        """The mixed ΔW of `key`, dense, in the base's layout (a module an ingredient lacks: a zero update)."""
        factors = self.exact_factors(key)
        if factors is not None:
            module = self.module(key)
            a, b = factors
            from ladle.io.lora import to_base_layout

            return to_base_layout(b.astype(self.accumulate) @ a.astype(self.accumulate), module)
        holders = self.holders(key)
        shape = self._shape(key)
        w = weights_for(self.plan, key)
        if w is not None:  # linear, some tensor held whole
            return weighted_sum((self.ups[i].update(key, self.base, self.accumulate) for i in holders),
                                [w[i] for i in holders], self.accumulate)

        def tensors(indices):
            for i in indices:
                yield (self.ups[i].update(key, self.base, self.accumulate) if self.ups[i].changes(key)
                       else np.zeros(shape, dtype=self.accumulate))

        zero_base = np.zeros(shape, dtype=self.accumulate) if self.uses_base else None
        return np.asarray(self.plan.mix(key, tensors, zero_base, self.accumulate))

    def lowrank(self, key: str, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """A rank-`rank` (A, B) of the mixed update, in LoRA's layout; its relative error recorded."""
        module = self.module(key)
        factors = self.exact_factors(key)
        with _one_blas_thread():  # thin QRs and small SVDs: BLAS threads cost 10x more than they save on busy cores
            if factors is not None:
                a, b, error = lowrank.svd_of_factors(*factors, rank)
                method = "from factors"
            else:
                dense = self.delta(key)
                dense = dense.T if module.transposed else dense
                a, b, error, method = lowrank.truncated_svd(dense.reshape(dense.shape[0], -1), rank, seed=key)
        self.errors[key], self.methods[key] = error, method
        return a, b

    def _shape(self, key: str) -> tuple[int, ...]:
        for up in self.ups:
            if up.has_factors(key):
                return up.adapter.modules[key].shape
        if self.base is not None and key in self.base.keys():
            return tuple(self.base.info(key).shape)
        up = next(up for up in self.ups if up.changes(key))
        return tuple(up.adapter.weights.info(up.adapter.full[key]).shape)

    def whole(self, key: str) -> np.ndarray:
        """A tensor some adapters save whole (modules_to_save) in an adapter soup: unchanged when every adapter
        holds the same bytes; the linear mix when all hold it and the weights sum to 1; else base + mixed Δ."""
        holders = self.holders(key)
        first = self.ups[holders[0]].adapter.full_tensor(key)
        if len(holders) == len(self.ups) and all(
                np.array_equal(first, self.ups[i].adapter.full_tensor(key)) for i in holders[1:]):
            return first
        w = weights_for(self.plan, key)
        if w is not None and len(holders) == len(self.ups) and abs(sum(w) - 1.0) < SUM_TOLERANCE:
            acc = accumulator_dtype(first.dtype, self.accumulate)
            return converted(weighted_sum((self.ups[i].adapter.full_tensor(key) for i in holders), w, acc), first.dtype)
        if self.base is None:
            raise LadleError(f"saved whole by {len(holders)} of {len(self.ups)} adapters (modules_to_save): mixing it "
                             "this way needs the base (--base)", file=self.ups[holders[0]].name, key=key)
        original = self.base.array(key)
        acc = accumulator_dtype(original.dtype, self.accumulate)
        return converted(original.astype(acc) + self.delta(key), first.dtype)


def _one_blas_thread():
    """threadpoolctl's limit of BLAS to one thread (scikit-learn brings it), or nothing without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def module_keys(ups: list[Updates], base: Ingredient | None) -> list[str]:
    """Every key some adapter changes, in the base's order when there is a base, else in the first-seen order."""
    seen = dict.fromkeys(k for up in ups if up.adapter is not None for k in up.adapter.keys())
    if base is None:
        return list(seen)
    return [k for k in base.keys() if k in seen]


def adapter_config(ups: list[Updates], ranks: dict[str, int], base_name) -> dict:
    """The soup adapter's config: the first adapter's, with ranks per module and alpha = r (scaling 1)."""
    import re
    from collections import Counter

    first = next(up.adapter for up in ups if up.adapter is not None)
    modules = {key: next(up.adapter.modules[key] for up in ups if up.has_factors(key)) for key in ranks}
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {re.escape(modules[k].name): v for k, v in ranks.items() if v != r}
    config = dict(first.config)
    to_save = sorted({m for up in ups if up.adapter is not None for m in (up.adapter.config.get("modules_to_save") or [])})
    config.update({
        "peft_type": "LORA", "r": r, "lora_alpha": r, "use_rslora": False, "rank_pattern": pattern,
        "alpha_pattern": dict(pattern), "target_modules": sorted(m.name for m in modules.values()),
        "modules_to_save": to_save or None, "base_model_name_or_path": base_name, "inference_mode": True,
        "layers_to_transform": None, "layers_pattern": None, "exclude_modules": None,
        "init_lora_weights": True,
    })
    if any(m.transposed and m.kind == "linear" for m in modules.values()):
        config["fan_in_fan_out"] = True
    return config


def stored_key(module, factor: str) -> str:
    suffix = {("embedding", "A"): "lora_embedding_A", ("embedding", "B"): "lora_embedding_B"}.get(
        (module.kind, factor), f"lora_{factor}.weight")
    return f"base_model.model.{module.name}.{suffix}"


def describe_updates(up: Updates, digests: dict[str, str]) -> dict:
    from ladle.soup.record import describe_ingredient

    entry = describe_ingredient(up, digests)
    if up.adapter is not None:
        a = up.adapter
        entry["adapter"] = {"modules": len(a.modules), "ranks": sorted({m.rank for m in a.modules.values()}),
                            "scalings": sorted({round(m.scaling, 6) for m in a.modules.values()}),
                            "base_model_name_or_path": a.base_name, "saved_whole": sorted(a.full)}
    else:
        entry["full_checkpoint"] = True
    return entry


def missing_modules(ups: list[Updates], keys: list[str]) -> dict[str, list[str]]:
    """By ingredient: the adapted modules it does not adapt (zero updates in the soup)."""
    out = {}
    for up in ups:
        if up.adapter is not None:
            lacking = [k for k in keys if k in _all_modules(ups) and not up.changes(k)]
            if lacking:
                out[up.name] = lacking
    return out


def _all_modules(ups: list[Updates]) -> set[str]:
    return {k for up in ups if up.adapter is not None for k in up.adapter.modules}


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    target = numpy_dtype(dtype)
    return x if x.dtype == target else converted(x, target)
