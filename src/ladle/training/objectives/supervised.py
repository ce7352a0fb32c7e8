"""Supervised objectives: cross-entropy on labelled images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladle.training.objectives.base import Batch, Objective


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
