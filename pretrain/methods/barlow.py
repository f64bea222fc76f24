"""Barlow Twins (Zbontar et al., 2021): cross-correlation of the two views' embeddings -> I."""

from ..losses import barlow_twins
from .base import Method, register_method


@register_method("barlow")
class BarlowTwins(Method):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = self.projector()
        self.lambd = cfg.METHOD.BARLOW.LAMBDA

    def compute(self, views):
        hs, taps = self.encode(views)
        z1, z2 = (self.head(h) for h in hs)
        return {"losses": {"loss_barlow": barlow_twins(z1, z2, self.lambd)},
                "features": {"h": hs, "taps": taps, "z": [z1, z2]}}
