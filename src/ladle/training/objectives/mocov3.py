"""MoCo v3 (Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers", 2021).

Two augmented views; the online encoder + projector + predictor gives queries, a momentum copy of encoder and
projector gives keys; symmetric InfoNCE at temperature T, scaled by 2T as in the paper; the momentum rises
from `momentum_start` to 1 on a cosine over the run. `simplified=True` is the Self-Soupervision authors' simplified
form: the same encoder for both views, no momentum copy, no predictor (keys keep their gradients).
Heads from lightly (MoCoProjectionHead with 3 layers and BatchNorm, BYOLPredictionHead).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ladle.models.encoder import embed, probe_shapes
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.views import augment, moco_views


def contrastive(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries against keys (positives on the diagonal), × 2T as MoCo v3 scales it."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = q @ k.T / temperature
    return 2 * temperature * F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def momentum_at(step: int, total_steps: int, start: float) -> float:
    """The cosine momentum schedule: `start` at step 0, 1 at the last step."""
    from lightly.utils.scheduler import cosine_schedule

    return float(cosine_schedule(step, max(total_steps, 1), start, 1.0))


class MoCoV3(Objective):
    name = "mocov3"
    encoder_only = True

    def __init__(self, *, temperature: float = 0.2, momentum_start: float = 0.99, proj_dim: int = 128, hidden_dim: int = 512,
                 crop_scale: float = 0.2, simplified: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum_start <= 1.0:
            raise ValueError(f"momentum_start must be in [0, 1], got {momentum_start}")
        if proj_dim < 1 or hidden_dim < 1:
            raise ValueError(f"proj_dim and hidden_dim must be ≥ 1, got {proj_dim}, {hidden_dim}")
        if not 0.0 < crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {crop_scale}")
        self.temperature, self.momentum_start, self.simplified = temperature, momentum_start, simplified
        self.proj_dim, self.hidden_dim, self.views = proj_dim, hidden_dim, moco_views(crop_scale)

    def setup(self, model: nn.Module, data) -> None:
        from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead

        (width,) = probe_shapes(model, data.x)
        self.projector = MoCoProjectionHead(width, self.hidden_dim, self.proj_dim, num_layers=3, batch_norm=True)
        if not self.simplified:
            self.predictor = BYOLPredictionHead(self.proj_dim, self.hidden_dim, self.proj_dim)
            self.momentum_encoder = copy.deepcopy(model)
            self.momentum_projector = copy.deepcopy(self.projector)
            for p in [*self.momentum_encoder.parameters(), *self.momentum_projector.parameters()]:
                p.requires_grad_(False)

    def trainable_modules(self) -> list[nn.Module]:
        return [self.projector] + ([] if self.simplified else [self.predictor])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        x1, x2 = (batch.input(augment(batch.x, v, batch.generator)) for v in self.views)
        z1, z2 = self.projector(embed(model, x1)), self.projector(embed(model, x2))
        if self.simplified:
            return contrastive(z1, z2, self.temperature) + contrastive(z2, z1, self.temperature)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        for online, copied in zip(model.modules(), self.momentum_encoder.modules()):
            copied.training = online.training  # the copy follows the run's BatchNorm policy
        with torch.no_grad():
            k1 = self.momentum_projector(embed(self.momentum_encoder, x1))
            k2 = self.momentum_projector(embed(self.momentum_encoder, x2))
        return contrastive(q1, k2, self.temperature) + contrastive(q2, k1, self.temperature)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.simplified:
            return
        from lightly.models.utils import update_momentum

        m = momentum_at(step, total_steps, self.momentum_start)
        update_momentum(model, self.momentum_encoder, m)
        update_momentum(self.projector, self.momentum_projector, m)
