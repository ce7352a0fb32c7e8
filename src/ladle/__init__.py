"""ladle: model soups. Average fine-tuned checkpoints into one model, streaming, checked and recorded.

    import ladle
    report = ladle.check(["a.safetensors", "b.safetensors"])
    soup = ladle.cook("uniform", ["a.safetensors", "b.safetensors"], out="soup.safetensors")

The names below are loaded on first use, so `import ladle` (and `ladle --help`) does not import torch.
"""

from ladle._version import __version__
from ladle.errors import LadleError

_EXPORTS = {
    "Ingredient": "ladle.io.checkpoints", "open_ingredient": "ladle.io.checkpoints",
    "open_ingredients": "ladle.io.checkpoints", "read_manifest": "ladle.io.manifest",
    "Soup": "ladle.soup.cook", "cook": "ladle.soup.cook", "check": "ladle.soup.check",
    "Plan": "ladle.soup.recipes", "RECIPES": "ladle.soup.recipes", "recipe": "ladle.soup.recipes",
    "load_soup": "ladle.soup.cook", "ResultStore": "ladle.results.store",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ladle' has no attribute '{name}'")


__all__ = ["LadleError", "__version__", *_EXPORTS]
