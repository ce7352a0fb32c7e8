"""`ladle demo`: until the tasting demo lands, cook soups of generated checkpoints and show the check report.

The checkpoints are a small conv net (with BatchNorm) and four "fine-tuned" variants made by seeded
perturbations of it, so the demo needs no data and no download.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .check import check, format_report
from .checkpoints import open_ingredients
from .cook import cook
from .writer import SoupWriter


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def make_checkpoints(folder: Path, n: int = 4, seed: int = 0) -> tuple[Path, list[Path]]:
    """A stock model and n variants, each the stock plus its own seeded task vector."""
    torch.manual_seed(seed)
    stock = small_net().state_dict()
    paths = []
    for i, state in enumerate([stock] + [_perturbed(stock, seed + 1 + i, scale=0.02 * (1 + i)) for i in range(n)]):
        path = folder / ("stock.safetensors" if i == 0 else f"ingredient-{i}.safetensors")
        infos = {k: _info(t) for k, t in state.items()}
        with SoupWriter(path, infos, force=True) as w:
            for k, t in state.items():
                w.add(k, t)
            w.finish({"generated_by": "ladle demo", "seed": seed + i})
        paths.append(path)
    return paths[0], paths[1:]


def _info(t):
    from .checkpoints import TensorInfo

    return TensorInfo(tuple(t.shape), t.dtype)


def _perturbed(state: dict, seed: int, scale: float) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {k: (t + scale * torch.randn(t.shape, generator=g) if t.is_floating_point() else t.clone())
            for k, t in state.items()}


def run_demo(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    stock, ingredients = make_checkpoints(folder)
    print(f"generated a stock model and {len(ingredients)} ingredients in {folder}/\n")
    print(format_report(check(open_ingredients(ingredients), open_ingredients([stock])[0], progress=False)))
    print()
    for recipe, kwargs in [("uniform", {}), ("model-stock", {"base": stock}), ("interpolate", {"base": stock, "alpha": 0.5})]:
        out = folder / f"soup-{recipe}.safetensors"
        soup = cook(recipe, ingredients, out=out, force=True, **kwargs)
        print(f"{recipe:<12} -> {out}  sha256 {next(iter(soup.sha256.values()))[:16]}…")
    return 0
