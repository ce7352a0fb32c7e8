"""What a cook records, shared by the checkpoint and the adapter cooks: the `Soup` it returns, the output dtype,
each input's entry in the manifest, the versions, and the command line that remakes the soup."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ladle.errors import LadleError
from ladle.io.dtypes import FLOAT_NAMES, dtype_name
from ladle.soup.recipes import RECIPES

ACCUMULATORS = {"float32": np.float32, "float64": np.float64}
NOT_HASHED = "not hashed"  # the sha256 of an ingredient under --no-hash


@dataclass
class Soup:
    """What `cook` made: the tensors (in memory) or the file(s) written, and the manifest."""

    manifest: dict
    state_dict: dict | None = None  # of torch tensors
    path: Path | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def parse_dtype(name) -> str | None:
    """The output dtype's safetensors name, from a name ("bf16", "float32", "F16") or a numpy or torch dtype."""
    if name is None:
        return None
    aliases = {"fp32": "F32", "float32": "F32", "fp16": "F16", "float16": "F16", "half": "F16", "bf16": "BF16",
               "bfloat16": "BF16", "fp64": "F64", "float64": "F64", "double": "F64"}
    try:
        key = dtype_name(name) if not isinstance(name, str) else aliases.get(name.lower(), name.upper())
    except ValueError:
        key = None
    if key not in FLOAT_NAMES - {"C64"}:
        raise LadleError(f"dtype: '{name}' is not a floating-point dtype (float32, float16, bfloat16, float64)")
    return key


def versions(evaluated: bool) -> dict:
    """What made the soup: the maths is numpy's; torch's version matters only where a model was evaluated."""
    import ml_dtypes

    from ladle._version import __version__

    versions = {"ladle": __version__, "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__,
                "python": platform.python_version()}
    if evaluated:
        import torch

        versions["torch"] = torch.__version__
    return versions


def describe_ingredient(ing, digests: dict[str, str]) -> dict:
    files = [{"path": str(f), "bytes": f.stat().st_size, "sha256": digests.get(str(f), NOT_HASHED)} for f in ing.files]
    entry = {"path": ing.name, "bytes": sum(f["bytes"] for f in files) if files else ing.nbytes, "files": files}
    if len(files) == 1:
        entry["sha256"] = files[0]["sha256"]
    if ing.notes:
        entry["notes"] = ing.notes
    return entry


def reproduce_command(recipe: str, ingredients: list, out, options: dict, params: dict, scorer) -> list[str] | None:
    """The `ladle cook` command line that remakes this soup (None for in-memory ingredients: no command can)."""
    from ladle.soup.options import COOK_OPTIONS

    paths = [*ingredients, *([options["base"]] if options["base"] is not None else []),
             *([options["config_from"]] if options["config_from"] is not None else [])]
    if not all(isinstance(p, (str, Path)) for p in paths):
        return None
    spec = RECIPES[recipe]
    words = ["ladle", "cook", recipe, *map(str, ingredients), "-o", str(out)]
    for p in COOK_OPTIONS:
        if p.name != "force":
            words += p.argv(options[p.name])
    tasting = getattr(scorer, "spec", None)  # a TastingSpec: its seed is the recipe's too
    words += [w for p in spec.parameters if not (tasting and p.name == "seed") for w in p.argv(params.get(p.name))]
    words += tasting.argv() if tasting is not None else []
    return words


