"""YAML recipe files: the same fields as the command line, with errors that name the field and the line.

    recipe: weighted
    ingredients: [a.safetensors, b.safetensors]
    weights: [0.3, 0.7]
    output: soup.safetensors

Relative paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ladle.errors import LadleError
from ladle.soup.recipes import RECIPES

# field -> (accepted Python types, description for errors)
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "recipe": ((str,), "a recipe name"),
    "ingredients": ((list,), "a list of paths"),
    "base": ((str,), "a path"),
    "output": ((str,), "a path"),
    "force": ((bool,), "true or false"),
    "include": ((list, str), "a glob or a list of globs"),
    "exclude": ((list, str), "a glob or a list of globs"),
    "accumulate": ((str,), "float32 or float64"),
    "dtype": ((str,), "a dtype name"),
    "int_policy": ((str,), "first or strict"),
    "reject_nonfinite": ((bool,), "true or false"),
    "max_shard_size": ((str, int), "a size such as 5GB"),
    "weights": ((list,), "a list of numbers"),
    "normalize": ((bool,), "true or false"),
    "alpha": ((int, float), "a number"),
    "accept": ((str,), "ge or gt"),
    "with_replacement": ((bool,), "true or false"),
    "per": ((str,), "model or layer"),
    "epochs": ((int,), "an integer"),
    "batch_size": ((int,), "an integer"),
    "lr": ((int, float), "a number"),
    "shots": ((int,), "an integer"),
    "grid": ((int,), "an integer"),
    "samples": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "model": ((str,), "a model spec"),
    "num_classes": ((int,), "an integer"),
    "data": ((str, list), "a data spec or a list of them"),
    "image_size": ((int,), "an integer"),
    "bn": ((str,), "average, recalibrate or first"),
    "bn_data": ((str,), "a data spec"),
    "device": ((str,), "a device name"),
}
PATH_FIELDS = ("base", "output")


def load_recipe_file(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Parse and validate; return (fields ready for `cook`, line of each field)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise LadleError(f"cannot read: {e.strerror}", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LadleError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict) or node is None:
        raise LadleError(f"{path}: a recipe file must be a mapping of field: value")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    known = ", ".join(FIELDS)
    for field, value in data.items():
        where = f"{path}:{lines.get(field, '?')}"
        if field not in FIELDS:
            raise LadleError(f"{where}: unknown field '{field}' (known fields: {known})")
        types, description = FIELDS[field]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise LadleError(f"{where}: field '{field}' must be {description}, got {value!r}")
        if field == "weights" and not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in value):
            raise LadleError(f"{where}: field 'weights' must be a list of numbers, got {value!r}")
        if field == "ingredients" and not all(isinstance(p, str) for p in value):
            raise LadleError(f"{where}: field 'ingredients' must be a list of paths, got {value!r}")
    for required in ("recipe", "ingredients"):
        if required not in data:
            raise LadleError(f"{path}: missing field '{required}'")
    name = data["recipe"]
    if name not in RECIPES:
        raise LadleError(f"{path}:{lines['recipe']}: field 'recipe': unknown recipe '{name}' (known: {', '.join(sorted(RECIPES))})")
    recipe_params = set(RECIPES[name].parameters) | ({"seed"} if name in ("learned", "season") else set())
    all_recipe_params = {p for r in RECIPES.values() for p in r.parameters}
    for field in data:
        if field in all_recipe_params and field not in recipe_params:
            raise LadleError(f"{path}:{lines[field]}: field '{field}' is not used by recipe '{name}'")
    root = path.parent
    fields = dict(data)
    fields["ingredients"] = [str(root / p) for p in data["ingredients"]]
    for key in PATH_FIELDS:
        if key in fields:
            fields[key] = str(root / fields[key])
    for key in ("include", "exclude"):
        if isinstance(fields.get(key), str):
            fields[key] = [fields[key]]
    return fields, lines


def locate(error: LadleError, path: Path, lines: dict[str, int]) -> LadleError:
    """Point an error about a field (message 'field: …') at its line in the recipe file."""
    text = str(error)
    field = text.split(":", 1)[0]
    if field in lines:
        return LadleError(f"{path}:{lines[field]}: field {text}")
    return error
