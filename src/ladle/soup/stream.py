"""The streaming mix: one key at a time from lazy ingredients, through a recipe's plan. Used by `cook` (to disk)
and by scorers (candidate soups in memory); memory stays flat in the number of ingredients."""

from __future__ import annotations

import torch

from ladle.errors import LadleError
from ladle.io.checkpoints import Ingredient, is_float


def mix_stream(plan, ings: list[Ingredient], keys: list[str], base_ing: Ingredient | None = None, *,
               out_dtypes: dict[str, torch.dtype] | None = None, accumulate: torch.dtype = torch.float32,
               int_policy: str = "first", reject_nonfinite: bool = False, int_disagreements: list[str] | None = None):
    """Yield (key, mixed tensor) one key at a time: the heart of every soup, on disk or in memory."""
    for key in keys:
        dtype = out_dtypes[key] if out_dtypes else ings[0].info(key).dtype
        if is_float(dtype):
            base_t = base_ing.get(key) if base_ing else None
            if base_t is not None:
                _check_finite(base_t, base_ing, key, reject_nonfinite)
            tensor = plan.mix(key, _reader(ings, key, reject_nonfinite), base_t, accumulate).to(dtype)
        else:
            tensor, agree = _integer_tensor(ings, key, int_policy)
            if not agree and int_disagreements is not None:
                int_disagreements.append(key)
        for ing in ings + ([base_ing] if base_ing else []):
            ing.release(key)
        yield key, tensor
        del tensor  # not kept alive while the next key is mixed: one finished tensor in memory at a time


def _check_finite(t: torch.Tensor, ing: Ingredient, key: str, reject: bool) -> None:
    if reject and not torch.isfinite(t).all():
        raise LadleError("holds NaN or Inf values (--reject-nonfinite)", file=ing.name, key=key)


def _reader(ings: list[Ingredient], key: str, reject_nonfinite: bool):
    """The plan asks for ingredient tensors by index; they are read one at a time, in order."""

    def tensors(indices: list[int]):
        for i in indices:
            t = ings[i].get(key)
            _check_finite(t, ings[i], key, reject_nonfinite)
            yield t
            ings[i].release(key)  # consumed: drop its pages, so one ingredient's tensor is resident, not N

    return tensors


def _integer_tensor(ings: list[Ingredient], key: str, policy: str) -> tuple[torch.Tensor, bool]:
    """Integer tensors are never averaged: keep the first ingredient's, or insist that all agree."""
    first = ings[0].get(key).clone()
    for ing in ings[1:]:
        if not torch.equal(first, ing.get(key)):
            if policy == "strict":
                raise LadleError(f"integer tensor differs from {ings[0].name} (--int-policy strict)", file=ing.name, key=key)
            return first, False
    return first, True
