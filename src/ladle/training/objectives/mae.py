"""MAE (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2022), for timm Vision Transformers.

A random `mask_ratio` of the patch tokens is dropped; the encoder (the stock ViT, wrapped by lightly's
MaskedVisionTransformerTIMM without re-initialising anything) sees the rest; a light transformer decoder
(lightly's MaskedVisionTransformerDecoderTIMM between two linear maps) predicts the masked patches' pixels; the loss is their mean squared error
(per-patch normalised targets with `norm_pix_loss`). The decoder is the objective's; the encoder is the run's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ladle.errors import LadleError
from ladle.training.objectives.base import Batch, Objective
from ladle.training.objectives.views import View, augment


class MAE(Objective):
    name = "mae"
    encoder_only = True

    def __init__(self, *, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix_loss: bool = False, crop_scale: float = 0.2):
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim < 1 or decoder_depth < 1 or decoder_heads < 1 or decoder_dim % decoder_heads:
            raise ValueError(f"decoder_dim must be a positive multiple of decoder_heads, got {decoder_dim}, {decoder_heads}")
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder_dim, self.decoder_depth, self.decoder_heads = decoder_dim, decoder_depth, decoder_heads
        self.view = View(scale=(crop_scale, 1.0), jitter=0.0, grayscale_p=0.0)  # MAE: crop and flip only

    def setup(self, model: nn.Module, data) -> None:
        from lightly.models.modules import MaskedVisionTransformerTIMM
        from lightly.models.modules.masked_vision_transformer_decoder_timm import MaskedVisionTransformerDecoderTIMM

        if not all(hasattr(model, a) for a in ("patch_embed", "blocks", "embed_dim", "num_prefix_tokens")):
            raise LadleError(f"objective mae: needs a timm Vision Transformer, got {type(model).__name__} "
                             "(use 'masked' for convolutional encoders)")
        side = data.x.shape[-1]
        if tuple(model.patch_embed.img_size) != (side, side):
            raise LadleError(f"objective mae: the ViT takes {tuple(model.patch_embed.img_size)} px images, the data "
                             f"are {side} px (set image_size)")
        # the wrapper re-initialises nothing: the stock's weights are the start (weight_initialization "skip")
        masked = MaskedVisionTransformerTIMM(vit=model, weight_initialization="skip", pos_embed_initialization="skip")
        object.__setattr__(self, "_masked", masked)  # not a submodule: the model stays the run's, not the objective's
        self.patch_size = model.patch_embed.patch_size[0]
        self.to_decoder = nn.Linear(model.embed_dim, self.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(num_patches=model.patch_embed.num_patches,
                                                          embed_dim=self.decoder_dim, depth=self.decoder_depth,
                                                          num_heads=self.decoder_heads,
                                                          num_prefix_tokens=model.num_prefix_tokens)
        self.to_pixels = nn.Linear(self.decoder_dim, self.patch_size**2 * 3)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        from lightly.models import utils

        images = batch.input(augment(batch.x, self.view, batch.generator))
        n = len(images)
        length = self._masked.sequence_length
        idx_keep, idx_mask = utils.random_token_mask((n, length), mask_ratio=self.mask_ratio, device=images.device)
        encoded = self._masked.encode(images, idx_keep=idx_keep)
        tokens = utils.repeat_token(self.decoder.mask_token, (n, length))  # mask tokens in the dropped places
        decoded = self.decoder(utils.set_at_index(tokens, idx_keep, self.to_decoder(encoded)))
        predicted = self.to_pixels(utils.get_at_index(decoded, idx_mask))
        prefix = model.num_prefix_tokens
        target = utils.get_at_index(utils.patchify(images, self.patch_size), idx_mask - prefix)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        return F.mse_loss(predicted, target)
