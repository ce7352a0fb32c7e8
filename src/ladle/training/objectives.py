"""Objectives: what one training step minimises. The loop (ladle.training.loop) knows nothing else about them.

Protocol (subclass `Objective`, an nn.Module, and override what you need):

    __init__(self, *, knob=default, ...)   keyword-only hyper-parameters ("knobs"); their names become sweep config
                                            fields and their defaults give the field's type. Keep it cheap: the
                                            config validator constructs the objective with each listed value.
    setup(model, data)                      once, before the optimiser is built: build heads sized to the model,
                                            copy a momentum encoder, ... (global RNG seeded from the run's seed)
    loss(model, batch) -> Tensor            one step's scalar loss. `batch` holds the raw images in [0, 1], the
                                            labels and the run's seeded generator: draw augmentations (one view or
                                            two) from `batch.generator`, then `batch.input(view)` normalises and
                                            moves a view to the device in the model's layout.
    trainable_modules() -> list[Module]     modules the objective owns whose parameters the optimiser trains
                                            alongside the model's (default: itself, if it has parameters)
    after_step(model, step, total_steps)    after each optimiser step (e.g. a momentum-encoder update)
    extra_state() -> dict[str, Tensor]      tensors worth keeping beside the ingredient (heads, momentum
                                            encoder); the sweep writes them to `objective-NN.safetensors`

Do not register the model as a submodule of the objective (it is passed to each call), so the objective's own
parameters and state stay its own. Objectives are looked up in OBJECTIVES by name, or imported from a
`package.module:Class` spec, which is how an objective outside ladle reaches a sweep's worker processes.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ladle.errors import LadleError


@dataclass
class Batch:
    """One step's examples, as the loop hands them to an objective."""

    x: torch.Tensor  # images in [0, 1], (N, 3, H, W), on the CPU, not augmented
    y: torch.Tensor  # labels, on the CPU
    generator: torch.Generator  # the run's seeded generator: augmentations drawn from it are reproducible
    mean: torch.Tensor  # (1, 3, 1, 1): the model's input normalisation
    std: torch.Tensor
    device: torch.device | str = "cpu"
    step: int = 0
    total_steps: int = 1

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise a view and move it to the device, channels-last (what the model eats)."""
        from ladle.evaluation.evaluator import channels_last

        return channels_last(((x - self.mean) / self.std).to(self.device))

    def labels(self) -> torch.Tensor:
        return self.y.to(self.device)


class Objective(nn.Module):
    """Base class: no heads, no hook, no extra state. See the module docstring for the protocol."""

    name = "objective"

    def setup(self, model: nn.Module, data) -> None:
        pass

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def trainable_modules(self) -> list[nn.Module]:
        return [self] if any(True for _ in self.parameters()) else []

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±pixels (edge-replicated padding, then a random crop)."""
    if pixels == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


class CrossEntropy(Objective):
    """Supervised cross-entropy with label smoothing, on images shifted by up to ±`shift` pixels."""

    name = "cross_entropy"

    def __init__(self, *, label_smoothing: float = 0.0, shift: int = 0):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"must be in [0, 1], got {label_smoothing}")
        if shift < 0:
            raise ValueError(f"must be ≥ 0 pixels, got {shift}")
        self.label_smoothing, self.shift = label_smoothing, shift

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = random_shift(batch.x, self.shift, batch.generator)
        return F.cross_entropy(model(batch.input(x)), batch.labels(), label_smoothing=self.label_smoothing)


# New entries go at the end: a sweep draws its listed fields in registry order (ladle.training.config).
OBJECTIVES: dict[str, type[Objective]] = {
    "cross_entropy": CrossEntropy,
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
