"""YAML recipe files: the fields of `ladle cook`, read from the same declarations, with errors naming file and line.

    recipe: weighted
    ingredients: [a.safetensors, b.safetensors]
    weights: [0.3, 0.7]
    output: soup.safetensors

Fields: `recipe`, `ingredients`, `output`, the cook options (base, include, exclude, dtype, …), the recipe's own
parameters, and, for recipes that taste candidate soups, the tasting options (model, data, bn, …). Relative
paths are resolved against the YAML file's folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ladle.errors import LadleError
from ladle.soup.schema import Param

PATH_FIELDS = ("base", "output", "bn_data", "config_from")


def cook_params() -> list[Param]:
    """The options every recipe shares (ladle.soup.options)."""
    from ladle.soup.options import COOK_OPTIONS

    return COOK_OPTIONS


def tasting_params() -> list[Param]:
    """The options of recipes that taste candidate soups, declared once by ladle.spec.TastingSpec."""
    from ladle.spec import TASTING_OPTIONS

    return TASTING_OPTIONS


def read_yaml_mapping(path: Path) -> tuple[dict, dict[str, int]]:
    """(mapping, line of each top-level field) of a YAML file; one-line errors naming the file and line."""
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
        raise LadleError(f"{path}: must be a mapping of field: value")
    return data, {k.value: k.start_mark.line + 1 for k, _ in node.value}


def load_recipe_file(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Parse and validate; return (fields by Python name, ready for `cook`, line of each field)."""
    from ladle.soup.recipes import RECIPES

    path = Path(path)
    data, lines = read_yaml_mapping(path)
    for required in ("recipe", "ingredients"):
        if required not in data:
            raise LadleError(f"{path}: missing field '{required}'")
    name = data["recipe"]
    recipe = RECIPES.get(name, where=f"{path}:{lines['recipe']}: field 'recipe'")
    params = cook_params() + recipe.parameters + (tasting_params() if recipe.needs_scorer else [])
    by_field = {p.field: p for p in params}
    all_recipe_fields = {p.field for r in RECIPES.values() for p in r.parameters} | {p.field for p in tasting_params()}
    fields: dict = {}
    for field, value in data.items():
        where = f"{path}:{lines.get(field, '?')}"
        if field in ("recipe",):
            continue
        if field == "ingredients":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise LadleError(f"{where}: field 'ingredients' must be a list of paths, got {value!r}")
            fields["ingredients"] = [str(path.parent / v) for v in value]
            continue
        if field == "output":
            if not isinstance(value, str):
                raise LadleError(f"{where}: field 'output' must be a path, got {value!r}")
            fields["output"] = str(path.parent / value)
            continue
        if field not in by_field:
            if field in all_recipe_fields:
                raise LadleError(f"{where}: field '{field}' is not used by recipe '{name}'")
            known = ", ".join(["recipe", "ingredients", "output", *by_field])
            raise LadleError(f"{where}: unknown field '{field}' (known fields: {known})")
        p = by_field[field]
        try:
            value = p.check(value)
        except LadleError as e:
            raise LadleError(f"{where}: field {e}") from None
        fields[p.name] = str(path.parent / value) if p.name in PATH_FIELDS and value is not None else value
    return fields, lines


def locate(error: LadleError, path: Path, lines: dict[str, int]) -> LadleError:
    """Point an error about a field (message 'field: …') at its line in the recipe file."""
    text = str(error)
    field = text.split(":", 1)[0]
    if field in lines:
        return LadleError(f"{path}:{lines[field]}: field {text}")
    return error
