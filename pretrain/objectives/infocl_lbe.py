"""InfoCL LBE (Wang et al., CVPR 2022): a stochastic representation h = mu + sigma*eps whose
mutual information with the input is raised through a batch lower bound (losses.lbe_bound).

    loss_lbe_<stage> = -WEIGHT * STAGE_WEIGHT * I_hat(h_stage; v), over all 2N views.

The final feature h (layer4) is stochastic while training (declared as `feature_noise`) and is
what the projector sees; evaluation uses mu. Earlier stages (CIFAR: layer2, layer3; declared as
`taps`) are globally pooled and noised for the bound only (our reading of the paper; their
forward pass is unchanged).
"""

import torch
from fvcore.common.config import CfgNode as CN

from ssl2det.errors import ConfigError

from ..losses import lbe_bound
from .base import Objective, register_objective


def add_infocl_lbe_config(cfg):
    cfg.INFOCL_LBE = CN()
    cfg.INFOCL_LBE.WEIGHT = 1.0  # lambda
    cfg.INFOCL_LBE.SIGMA = 0.1  # std of the feature noise (fixed, as the paper)
    cfg.INFOCL_LBE.RHO = 0.05  # critic scale: 1/20 for 32-64 px images, 1/80 for ImageNet
    cfg.INFOCL_LBE.STAGES = ("layer2", "layer3", "layer4")
    cfg.INFOCL_LBE.STAGE_WEIGHTS = (0.25, 0.5, 1.0)


@register_objective("infocl_lbe", add_infocl_lbe_config)
class InfoCLLowerBound(Objective):
    def __init__(self, cfg, feature_dim):
        super().__init__(cfg, feature_dim)
        c = cfg.INFOCL_LBE
        if len(c.STAGES) != len(c.STAGE_WEIGHTS):
            raise ConfigError("INFOCL_LBE.STAGES and INFOCL_LBE.STAGE_WEIGHTS differ in length")
        self.stages = dict(zip(c.STAGES, c.STAGE_WEIGHTS))
        self.weight, self.sigma, self.rho = c.WEIGHT, c.SIGMA, c.RHO
        self.feature_noise = self.sigma
        self.taps = tuple(s for s in self.stages if s != "layer4")

    def forward(self, features):
        terms = {}
        for stage, stage_weight in self.stages.items():
            if stage == "layer4":
                h, mu = torch.cat(features.h), torch.cat(features.mu)
            else:
                mu = torch.cat([t[stage] for t in features.taps])
                h = mu + self.sigma * torch.randn_like(mu)
            terms[f"loss_lbe_{stage}"] = -self.weight * stage_weight * lbe_bound(h, mu, self.rho)
        return terms
