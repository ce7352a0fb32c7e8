"""MMCR (Yerxa, Kuang, Simoncelli, Chung, "Learning Efficient Coding of Natural Images with Maximum Manifold
Capacity Representations", 2023).

k augmented views of each image, embedded, projected and L2-normalised (as the Self-Soupervision code does;
lightly's MMCRLoss does not normalise); the loss is −‖C‖* (the nuclear norm of the matrix of per-image view
centroids) + λ · the mean nuclear norm of each image's views (lightly's MMCRLoss). Global-only: `views` global
crops; global + local: `local_views` more small crops (area `local_scale`, at half the side).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladle.models.encoder import embed, probe_shapes
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.views import View, augment


def mmcr_loss(z: torch.Tensor, lmda: float) -> torch.Tensor:
    """z: (batch, views, dim), normalised. −‖mean over views‖* + λ·Σ_i ‖z_i‖* / batch, through lightly's MMCRLoss
    (which takes the views split in two halves)."""
    from lightly.loss import MMCRLoss

    k = z.shape[1]
    if k % 2:
        raise ValueError(f"MMCR needs an even number of views in all, got {k}")
    return MMCRLoss(lmda=lmda)(z[:, : k // 2], z[:, k // 2 :])


class MMCR(Objective):
    name = "mmcr"
    encoder_only = True

    def __init__(self, *, views: int = 2, local_views: int = 0, lmda: float = 5e-3, proj_dim: int = 128,
                 hidden_dim: int = 512, crop_scale: float = 0.2, local_scale: float = 0.2):
        super().__init__()
        if views < 1 or local_views < 0 or (views + local_views) % 2 or views + local_views < 2:
            raise ValueError(f"views + local_views must be even and ≥ 2 (views ≥ 1), got {views} + {local_views}")
        if lmda < 0:
            raise ValueError(f"lmda must be ≥ 0, got {lmda}")
        if not (0.0 < crop_scale <= 1.0 and 0.0 < local_scale <= 1.0):
            raise ValueError(f"crop_scale and local_scale must be in (0, 1], got {crop_scale}, {local_scale}")
        self.lmda, self.proj_dim, self.hidden_dim = lmda, proj_dim, hidden_dim
        self.views = [View(scale=(crop_scale, 1.0), blur_p=0.5, solarize_p=0.1)] * views
        self.views += [View(scale=(min(0.05, local_scale), local_scale), size=0.5, blur_p=0.5)] * local_views

    def setup(self, model: nn.Module, data) -> None:
        from lightly.models.modules import MMCRProjectionHead

        (width,) = probe_shapes(model, data.x)
        self.projector = MMCRProjectionHead(width, self.hidden_dim, self.proj_dim)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        z = [F.normalize(self.projector(embed(model, batch.input(augment(batch.x, v, batch.generator)))), dim=1)
             for v in self.views]
        return mmcr_loss(torch.stack(z, dim=1), self.lmda)
