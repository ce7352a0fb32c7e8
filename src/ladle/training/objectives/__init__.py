"""Objectives: what one training step minimises (the protocol is in base.py). Supervised: cross_entropy.
Self-supervised (labels never read; the run's ingredient is the encoder): mocov3, mmcr, mae (ViT), masked (CNN).
"""

from __future__ import annotations

import importlib
import inspect

from torch import nn

from ladle.errors import LadleError
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.mae import MAE
from ladle.training.objectives.masked import MaskedImage
from ladle.training.objectives.mmcr import MMCR
from ladle.training.objectives.mocov3 import MoCoV3
from ladle.training.objectives.supervised import CrossEntropy, random_shift

# New entries go at the end: a sweep draws its listed fields in registry order (ladle.training.config).
OBJECTIVES: dict[str, type[Objective]] = {
    "cross_entropy": CrossEntropy,
    "mocov3": MoCoV3,
    "mmcr": MMCR,
    "mae": MAE,
    "masked": MaskedImage,
}


def objective_class(name: str) -> type[Objective]:
    """A registered objective, or `package.module:Class`."""
    if name in OBJECTIVES:
        return OBJECTIVES[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise LadleError(f"objective: cannot import '{name}': {e}") from None
        if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "loss"):
            return cls
        raise LadleError(f"objective: '{name}' is not an Objective class (an nn.Module with loss(model, batch))")
    raise LadleError(f"objective: unknown objective '{name}' (known: {', '.join(OBJECTIVES)}, or package.module:Class)")


def knobs_of(factory) -> dict[str, object]:
    """Keyword-only parameters with defaults: the hyper-parameters a registry entry takes, and their defaults."""
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def make_objective(name: str, **knobs) -> Objective:
    return objective_class(name)(**knobs)


__all__ = ["MAE", "MMCR", "OBJECTIVES", "Batch", "CrossEntropy", "MaskedImage", "MoCoV3", "Objective", "knobs_of",
           "make_objective", "objective_class", "random_shift"]
