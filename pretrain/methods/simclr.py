"""SimCLR (Chen et al., 2020): NT-Xent between the projections of two views."""

from fvcore.common.config import CfgNode as CN

from ..losses import nt_xent
from .base import Method, register_method


def add_simclr_config(cfg):
    cfg.METHOD.SIMCLR = CN()
    cfg.METHOD.SIMCLR.TEMPERATURE = 0.5


@register_method("simclr", add_simclr_config)
class SimCLR(Method):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.head = self.projector()
        self.temperature = cfg.METHOD.SIMCLR.TEMPERATURE

    def loss_terms(self, features):
        z1, z2 = (self.head(h) for h in features.h)
        return {"loss_nt_xent": nt_xent(z1, z2, self.temperature)}
