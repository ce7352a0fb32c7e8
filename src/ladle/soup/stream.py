"""The streaming mix: one key at a time from lazy ingredients, through a recipe's plan. Used by `cook` (to disk)
and by scorers (candidate soups in memory); memory stays flat in the number of ingredients."""

from __future__ import annotations

import numpy as np

from ladle.errors import LadleError
from ladle.io.checkpoints import Ingredient
from ladle.io.dtypes import is_float, numpy_dtype
from ladle.soup.mixing import converted


def mix_stream(plan, ings: list[Ingredient], keys: list[str], base_ing: Ingredient | None = None, *,
               out_dtypes: dict[str, str] | None = None, accumulate=np.float32,
               int_policy: str = "first", reject_nonfinite: bool = False, int_disagreements: list[str] | None = None,
               block: int | None = None):
    """Yield (key, mixed array) one key at a time: the heart of every soup, on disk or in memory (numpy arrays;
    ladle.io.dtypes.to_torch makes them tensors without a copy). `out_dtypes` by safetensors name ("BF16").

    With `block` (elements) and a plan whose mix is elementwise (a weighted sum: `plan.elementwise`), a larger
    floating tensor comes as consecutive flat parts of at most `block` elements, in order, under the same key:
    the same values, with memory bounded by the block instead of the largest tensor (the writer puts each part at
    its offset)."""
    for key in keys:
        dtype = out_dtypes[key] if out_dtypes else ings[0].info(key).dtype
        everyone = ings + ([base_ing] if base_ing else [])
        if is_float(dtype):
            numel = ings[0].info(key).numel
            step = _part_size(plan, numel, block)
            for start in range(0, numel, step) if step else [None]:
                part = slice(start, start + step) if step else None
                base_t = _read(base_ing, key, part) if base_ing else None
                if base_t is not None:
                    _check_finite(base_t, base_ing, key, reject_nonfinite)
                tensor = plan.mix(key, _reader(ings, key, reject_nonfinite, part), base_t, accumulate)
                if tensor.dtype != numpy_dtype(dtype):
                    tensor = converted(tensor, numpy_dtype(dtype))  # rounds to nearest even, as torch's .to
                del base_t
                for ing in everyone:
                    ing.release(key)
                yield key, tensor
                del tensor  # not kept alive while the next part is mixed: one finished tensor in memory at a time
        else:
            tensor, agree = _integer_tensor(ings, key, int_policy)
            if not agree and int_disagreements is not None:
                int_disagreements.append(key)
            for ing in everyone:
                ing.release(key)
            yield key, tensor
            del tensor


def count_parts(plan, ings: list[Ingredient], keys: list[str], block: int | None) -> int:
    """How many (key, tensor) items mix_stream yields with this block size."""
    total = 0
    for key in keys:
        info = ings[0].info(key)
        step = _part_size(plan, info.numel, block) if is_float(info.dtype) else None
        total += -(-info.numel // step) if step else 1
    return total


def _part_size(plan, numel: int, block: int | None) -> int | None:
    """Elements per part when this tensor is mixed in parts, else None (whole)."""
    return block if block and getattr(plan, "elementwise", False) and numel > block else None


def _read(ing: Ingredient, key: str, part: slice | None) -> np.ndarray:
    """The tensor, or one flat slice of it (a view: nothing is read until it is used)."""
    t = ing.array(key)
    return t if part is None else t.reshape(-1)[part]


def _check_finite(t: np.ndarray, ing: Ingredient, key: str, reject: bool) -> None:
    if reject and not np.isfinite(t).all():
        raise LadleError("holds NaN or Inf values (--reject-nonfinite)", file=ing.name, key=key)


def _reader(ings: list[Ingredient], key: str, reject_nonfinite: bool, part: slice | None = None):
    """The plan asks for ingredient tensors (or one flat slice of each) by index; read one at a time, in order."""

    def tensors(indices: list[int]):
        for i in indices:
            t = _read(ings[i], key, part)
            _check_finite(t, ings[i], key, reject_nonfinite)
            yield t
            ings[i].release(key)  # consumed: drop its pages, so one ingredient's tensor is resident, not N

    return tensors


def _integer_tensor(ings: list[Ingredient], key: str, policy: str) -> tuple[np.ndarray, bool]:
    """Integer tensors are never averaged: keep the first ingredient's, or insist that all agree."""
    first = ings[0].array(key).copy()
    for ing in ings[1:]:
        if not np.array_equal(first, ing.array(key)):
            if policy == "strict":
                raise LadleError(f"integer tensor differs from {ings[0].name} (--int-policy strict)", file=ing.name, key=key)
            return first, False
    return first, True
