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
    encoder_only (class attribute)          True for self-supervised objectives: labels are never read, and the
                                            run writes the encoder (the model without its classifier) as the
                                            ingredient (ladle.models.encoder)

Do not register the model as a submodule of the objective (it is passed to each call), so the objective's own
parameters and state stay its own. Objectives are looked up in OBJECTIVES by name, or imported from a
`package.module:Class` spec, which is how an objective outside ladle reaches a sweep's worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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
    encoder_only = False  # True: the run's ingredient is the encoder (the model without its head), labels unused

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
