"""Barlow Twins (Zbontar et al., 2021): cross-correlation of the two views' embeddings -> I."""

from fvcore.common.config import CfgNode as CN

from ..losses import barlow_twins
from .base import Method, register_method


def add_barlow_config(cfg):
    cfg.METHOD.BARLOW = CN()
    cfg.METHOD.BARLOW.LAMBDA = 0.0051  # weight of the off-diagonal terms
    # InfoCL's form of the loss: L2-normalised embeddings, standardised with the unbiased std
    # (the paper: neither, a batch norm without affine parameters)
    cfg.METHOD.BARLOW.L2_NORMALIZE = False
    cfg.METHOD.BARLOW.UNBIASED_STD = False


@register_method("barlow", add_barlow_config)
class BarlowTwins(Method):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = self.projector()
        b = cfg.METHOD.BARLOW
        self.lambd, self.l2_normalize, self.unbiased_std = b.LAMBDA, b.L2_NORMALIZE, b.UNBIASED_STD

    def loss_terms(self, features):
        z1, z2 = (self.head(h) for h in features.h)
        return {"loss_barlow": barlow_twins(z1, z2, self.lambd, self.l2_normalize,
                                            self.unbiased_std)}
