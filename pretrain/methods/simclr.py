"""SimCLR (Chen et al., 2020): NT-Xent between the projections of two views."""

from ..losses import nt_xent
from .base import Method, register_method


@register_method("simclr")
class SimCLR(Method):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = self.projector()
        self.temperature = cfg.METHOD.SIMCLR.TEMPERATURE

    def compute(self, views):
        hs, taps = self.encode(views)
        z1, z2 = (self.head(h) for h in hs)
        return {"losses": {"loss_nt_xent": nt_xent(z1, z2, self.temperature)},
                "features": {"h": hs, "taps": taps, "z": [z1, z2]}}
