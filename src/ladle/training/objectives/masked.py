"""Masked image modelling for convolutional encoders (after SimMIM, Xie et al. 2022, which masks the input).

A random `mask_ratio` of the image's `patch_size` patches is replaced by a learned token (one value per
channel, in normalised pixel space); the encoder's last feature map goes through a light decoder (a 1×1
convolution to stride² · 3 values per position, then pixel shuffle back to the input's size); the loss is the
L1 error on the masked pixels only. Token and decoder are the objective's; the encoder is the run's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladle.errors import LadleError
from ladle.models.encoder import feature_map, probe_shapes
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.views import View, augment


def patch_mask(n: int, side: int, patch_size: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, side, side) of 0/1: exactly round(ratio · patches) patches masked in each image."""
    per_side = side // patch_size
    patches = per_side * per_side
    masked = max(1, round(ratio * patches))
    order = torch.rand(n, patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(n, patches)
    mask.scatter_(1, order[:, :masked], 1.0)
    mask = mask.view(n, 1, per_side, per_side)
    return mask.repeat_interleave(patch_size, 2).repeat_interleave(patch_size, 3)


class MaskedImage(Objective):
    name = "masked"
    encoder_only = True

    def __init__(self, *, mask_ratio: float = 0.6, patch_size: int = 8, crop_scale: float = 0.67):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be ≥ 1, got {patch_size}")
        self.mask_ratio, self.patch_size = mask_ratio, patch_size
        self.view = View(scale=(crop_scale, 1.0), jitter=0.0, grayscale_p=0.0)  # SimMIM: crop and flip only

    def setup(self, model: nn.Module, data) -> None:
        side = data.x.shape[-1]
        if side % self.patch_size:
            raise LadleError(f"objective masked: patch_size {self.patch_size} does not divide the {side} px images")
        channels, h, w = probe_shapes(model, data.x, spatial=True)
        if side % h or side // h != side // w:
            raise LadleError(f"objective masked: a {h}×{w} feature map does not tile {side} px images")
        self.stride = side // h
        self.token = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.decoder = nn.Sequential(nn.Conv2d(channels, 3 * self.stride**2, 1), nn.PixelShuffle(self.stride))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x = batch.input(augment(batch.x, self.view, batch.generator))
        mask = patch_mask(len(x), x.shape[-1], self.patch_size, self.mask_ratio, batch.generator).to(x.device)
        corrupted = x * (1 - mask) + self.token * mask
        rebuilt = self.decoder(feature_map(model, corrupted))
        error = F.l1_loss(rebuilt, x, reduction="none") * mask
        return error.sum() / (mask.sum() * x.shape[1])
