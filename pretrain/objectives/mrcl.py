"""MRCL (Liu et al., arXiv 2211.09013): masked views as a stronger augmentation for the
contrastive branch, and a reconstruction branch that restores the masked input from the pooled
feature, regularising the discriminative task against over-compression.

    the method's loss on masked views + WEIGHT * MSE(dec(h_masked), x_unmasked) [on masked pixels]

**Our choices** (the paper does not publish them), each a config key: square patches of
PATCH_SIZE px (4 at 32 px, 16 at 224 px), MASK_RATIO 0.3 of the patches of every view set to 0
(the dataset mean after normalisation), InfoCL's RC decoder shapes, the loss on masked pixels
only (MASKED_ONLY), WEIGHT 1.
"""

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode as CN

from ssl2det.errors import ConfigError

from ..losses import reconstruction_mse
from .base import Objective, register_objective
from .decoders import ImageDecoder


def add_mrcl_config(cfg):
    cfg.MRCL = CN()
    cfg.MRCL.MASK_RATIO = 0.3
    cfg.MRCL.PATCH_SIZE = 4
    cfg.MRCL.WEIGHT = 1.0
    cfg.MRCL.MASKED_ONLY = True


def random_patch_mask(n: int, size: int, patch: int, ratio: float, device=None):
    """(n, 1, size, size) float mask, 1 on exactly round(ratio * patches) random patches/image."""
    grid = size // patch
    k = round(ratio * grid * grid)
    order = torch.rand(n, grid * grid, device=device).argsort(dim=1)
    mask = torch.zeros(n, grid * grid, device=device)
    mask.scatter_(1, order[:, :k], 1.0)
    mask = mask.view(n, 1, grid, grid)
    return F.interpolate(mask, scale_factor=patch, mode="nearest")


@register_objective("mrcl", add_mrcl_config)
class MaskedReconstruction(Objective):
    def __init__(self, cfg, feature_dim):
        super().__init__(cfg, feature_dim)
        c = cfg.MRCL
        if cfg.INPUT.SIZE % c.PATCH_SIZE:
            raise ConfigError(f"INPUT.SIZE {cfg.INPUT.SIZE} is not a multiple of "
                              f"MRCL.PATCH_SIZE {c.PATCH_SIZE}")
        self.ratio, self.patch, self.weight = c.MASK_RATIO, c.PATCH_SIZE, c.WEIGHT
        self.masked_only = c.MASKED_ONLY
        self.decoder = ImageDecoder(feature_dim, cfg.INPUT.SIZE)
        self.masks = []  # of the views of the current step, made in `prepare`

    def prepare(self, views):
        if not self.training:
            return views
        self.masks = [random_patch_mask(v.shape[0], v.shape[-1], self.patch, self.ratio,
                                        v.device) for v in views]
        return [v * (1 - m).to(v.dtype) for v, m in zip(views, self.masks)]

    def forward(self, features):
        loss = sum(reconstruction_mse(self.decoder(h.float()), x,
                                      m if self.masked_only else None)
                   for h, x, m in zip(features.h, features.originals, self.masks))
        return {"loss_mrcl_rec": self.weight * loss}
