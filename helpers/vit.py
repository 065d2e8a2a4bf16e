"""DermViT: the course's Vision Transformer, timm's own ``VisionTransformer`` sized for DermSynth.

Kept apart from ``helpers.models`` because importing timm takes about two seconds; ``load_vit``
and ``helpers.models.DermViT`` import it on first use.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer

from .data import CLASSES
from .models import PIXEL_MEAN, PIXEL_STD, Normalize


class DermViT(VisionTransformer):
    """A small Vision Transformer for 64x64 DermSynth images: timm's own ``VisionTransformer``.

    Patch 8 gives an 8x8 grid of 64 patch tokens plus the CLS token (T = 65 tokens), width 64,
    depth 4, 4 heads of 16 dimensions, MLP ratio 2: about 150k parameters. The class is read from
    the CLS token after the final LayerNorm (``global_pool="token"``), as in the original ViT.
    Everything else is timm's: ``model.blocks[i].attn`` is a ``timm.layers.Attention`` (with its
    fused ``scaled_dot_product_attention`` kernel), ``model.blocks[i].norm1`` the LayerNorm before
    it, so code written for a timm ViT runs here unchanged. As in DermNet, the input is in [0, 1]
    pixel space and the normalisation is inside the model.
    """

    def __init__(self, num_classes: int = len(CLASSES), embed_dim: int = 64, depth: int = 4,
                 num_heads: int = 4, patch_size: int = 8, img_size: int = 64):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=3, num_classes=num_classes,
                         global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                         mlp_ratio=2.0, qkv_bias=True, class_token=True)
        self.normalize = Normalize(PIXEL_MEAN, PIXEL_STD)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid (rows, columns): (8, 8) for 64x64 inputs."""
        return tuple(self.patch_embed.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(self.patch_embed.img_size)
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != size:
            raise ValueError(f"x must be [B, 3, {size[0]}, {size[1]}] (the ViT's positions are learned for "
                             f"that grid), got shape {tuple(x.shape)}")
        return super().forward(self.normalize(x))

