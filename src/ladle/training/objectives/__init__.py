"""Objectives: what one training step minimises (the protocol is in base.py). Supervised: cross_entropy.
Self-supervised (labels never read; the run's ingredient is the encoder): mocov3, mmcr, mae (ViT), masked (CNN).
"""

from __future__ import annotations

import inspect

from torch import nn

from ladle.errors import LadleError
from ladle.registry import Registry
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.mae import MAE
from ladle.training.objectives.masked import MaskedImage
from ladle.training.objectives.mmcr import MMCR
from ladle.training.objectives.mocov3 import MoCoV3
from ladle.training.objectives.supervised import CrossEntropy, random_shift

# New entries go at the end: a sweep draws its listed fields in registry order (ladle.training.config).
OBJECTIVES: Registry[type[Objective]] = Registry("objective")
OBJECTIVES.register("cross_entropy", CrossEntropy)
OBJECTIVES.register("mocov3", MoCoV3)
OBJECTIVES.register("mmcr", MMCR)
OBJECTIVES.register("mae", MAE)
OBJECTIVES.register("masked", MaskedImage)


def objective_class(name: str) -> type[Objective]:
    """A registered objective, or `package.module:Class` (how an objective outside ladle reaches workers)."""
    cls = OBJECTIVES.get(name, where="objective")
    if name in OBJECTIVES or (isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "loss")):
        return cls
    raise LadleError(f"objective: '{name}' is not an Objective class (an nn.Module with loss(model, batch))")


def knobs_of(factory) -> dict[str, object]:
    """Keyword-only parameters with defaults: the hyper-parameters a registry entry takes, and their defaults."""
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def make_objective(name: str, **knobs) -> Objective:
    return objective_class(name)(**knobs)


__all__ = ["MAE", "MMCR", "OBJECTIVES", "Batch", "CrossEntropy", "MaskedImage", "MoCoV3", "Objective", "knobs_of",
           "make_objective", "objective_class", "random_shift"]
