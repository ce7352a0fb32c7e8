"""The options every recipe shares, declared once: `cook` validates with it, the CLI and YAML files read it."""

from __future__ import annotations

from typing import Annotated, Literal

from ladle.soup.schema import Checkpoint, Size, params_of, validate


def _declaration(
    base: Annotated[Checkpoint, "the stock model (task-vector recipes, interpolate, model-stock)"] = None,
    force: Annotated[bool, "overwrite an existing output"] = False,
    include: Annotated[list[str], "soup only keys matching these globs (repeatable)"] = (),
    exclude: Annotated[list[str], "leave out keys matching these globs (repeatable)"] = (),
    encoder_only: Annotated[bool, "soup the shared encoder only: each ingredient's head (as its record or model names it) is left out"] = False,
    accumulate: Annotated[Literal["float32", "float64"], "accumulator dtype (float64 inputs always accumulate in float64)"] = "float32",
    dtype: Annotated[str, "output dtype of floating tensors: float32, float16, bfloat16 (needed when the ingredients' dtypes differ)"] = None,
    int_policy: Annotated[Literal["first", "strict"], "integer tensors are never averaged: keep the first's, or require agreement"] = "first",
    reject_nonfinite: Annotated[bool, "fail if an ingredient holds NaN or Inf"] = False,
    max_shard_size: Annotated[Size, "shard size of directory outputs"] = "5GB",
    no_hash: Annotated[bool, "skip the sha256 of the ingredients and of the output (the manifest says 'not hashed')"] = False,
    config_from: Annotated[Checkpoint, "directory outputs: take config, tokenizer and other non-weight files from this "
                                       "Hugging Face folder (default: the first ingredient's)"] = None,
    merge_into: Annotated[Checkpoint, "LoRA adapters: write a full model, this base folder plus the mixed update of "
                                      "each adapted module (config and tokenizer carried)"] = None,
    rank: Annotated[int, "LoRA adapters: write a rank-R adapter, the truncated SVD of each mixed update (any recipe); "
                         "without it linear recipes write the exact adapter of rank Σ rᵢ"] = None,
) -> None:
    """Options of `ladle cook` shared by every recipe."""


COOK_OPTIONS = params_of(_declaration, skip=())[0]
OPTION_NAMES = {p.name for p in COOK_OPTIONS}


def cook_options(**given) -> dict:
    """Every shared option, checked and converted, defaults filled in."""
    values = {p.name: p.default for p in COOK_OPTIONS}
    values.update(validate(COOK_OPTIONS, given, "cook"))
    return values
