"""ladle: model soups. Average fine-tuned checkpoints into one model, streaming, checked and recorded.

    import ladle
    report = ladle.check(ladle.open_ingredients(["a.safetensors", "b.safetensors"]))
    soup = ladle.cook("uniform", ["a.safetensors", "b.safetensors"], out="soup.safetensors")
"""

__version__ = "0.1.0"

from .check import check as _check_opened
from .checkpoints import Ingredient, open_ingredient, open_ingredients
from .cook import Soup, cook
from .errors import LadleError
from .recipes import RECIPES, Plan, recipe


def check(ingredients, base=None, include=(), exclude=(), progress=False):
    """Preflight report over ingredients (paths, state dicts, modules or opened `Ingredient`s)."""
    ings = open_ingredients(list(ingredients))
    base_ing = open_ingredient(base) if base is not None else None
    return _check_opened(ings, base_ing, include, exclude, progress)


def load_soup(path) -> dict:
    """A soup (or any checkpoint ladle reads) as a plain state dict."""
    return open_ingredient(path).state_dict()


def read_manifest(path) -> dict | None:
    """The manifest ladle embedded in a soup it wrote (None for other checkpoints)."""
    import json
    from pathlib import Path

    from .writer import DIR_MANIFEST, MANIFEST_KEY

    p = Path(path)
    if p.is_dir():
        return json.loads((p / DIR_MANIFEST).read_text()) if (p / DIR_MANIFEST).is_file() else None
    from .checkpoints import SafetensorsFile

    text = SafetensorsFile(p).metadata.get(MANIFEST_KEY)
    return json.loads(text) if text else None


__all__ = ["Ingredient", "LadleError", "Plan", "RECIPES", "Soup", "check", "cook", "load_soup",
           "open_ingredient", "open_ingredients", "read_manifest", "recipe"]
