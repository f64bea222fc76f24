"""SuperInfo (Yu et al., arXiv 2408.10292): keep the information the views share, drop what is
superfluous to each:  J = I(z1; z2) - lambda_a I(v1; z1 | v2) - lambda_b I(v2; z2 | v1).

The paper's estimators are not public. **Our interpretation** (as the multi-view information
bottleneck of Federici et al., ICLR 2020): the projector becomes a stochastic encoder
p(z|v) = N(mu(h), softplus(s(h))^2) (declared through `wrap_head`); I(z1; z2) is bounded by the
base method's contrastive loss on samples z ~ p(z|v); each superfluous term is bounded by a KL
between the two views' posteriors, I(v1; z1 | v2) <= KL(p(z1|v1) || p(z2|v2)):

    loss_superfluous = w(t) * [LAMBDA_A * KL(p1 || p2) + LAMBDA_B * KL(p2 || p1)]

with w(t) rising linearly from 0 to 1 over the first ANNEAL_FRACTION of training.
"""

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode as CN
from torch import nn

from ..losses import gaussian_kl
from .base import Objective, register_objective


def add_superinfo_config(cfg):
    cfg.SUPERINFO = CN()
    cfg.SUPERINFO.LAMBDA_A = 0.1  # (ours) weight of I(v1; z1 | v2)
    cfg.SUPERINFO.LAMBDA_B = 0.1  # (ours) weight of I(v2; z2 | v1)
    cfg.SUPERINFO.ANNEAL_FRACTION = 0.1  # (ours) share of training over which w goes 0 -> 1
    cfg.SUPERINFO.MIN_STD = 1e-4


class StochasticHead(nn.Module):
    """Wraps a projector into a Gaussian encoder: the projector gives the mean, a linear layer
    on the same input the standard deviation. Training returns a sample, evaluation the mean;
    the posteriors of the last forward passes are kept for the KL terms."""

    def __init__(self, projector: nn.Module, in_dim: int, out_dim: int, min_std: float):
        super().__init__()
        self.mean = projector
        self.std = nn.Linear(in_dim, out_dim)
        self.min_std = min_std
        self.posteriors = []

    def forward(self, h):
        mu = self.mean(h)
        std = F.softplus(self.std(h)) + self.min_std
        self.posteriors.append((mu, std))
        return mu + std * torch.randn_like(std) if self.training else mu


@register_objective("superinfo", add_superinfo_config)
class SuperInfo(Objective):
    def __init__(self, cfg, feature_dim):
        super().__init__(cfg, feature_dim)
        c = cfg.SUPERINFO
        self.feature_dim, self.out_dim = feature_dim, cfg.METHOD.PROJECTOR.OUT_DIM
        self.min_std = c.MIN_STD
        self.lambda_a, self.lambda_b, self.anneal = c.LAMBDA_A, c.LAMBDA_B, c.ANNEAL_FRACTION
        self.register_buffer("progress", torch.zeros(()))
        self._head = []  # a plain list: the head's parameters belong to the method

    def wrap_head(self, head):
        self._head = [StochasticHead(head, self.feature_dim, self.out_dim, self.min_std)]
        return self._head[0]

    def prepare(self, views):
        self._head[0].posteriors.clear()
        return views

    def forward(self, features):
        (mu1, std1), (mu2, std2) = self._head[0].posteriors[-2:]
        kl = (self.lambda_a * gaussian_kl(mu1, std1, mu2, std2)
              + self.lambda_b * gaussian_kl(mu2, std2, mu1, std1))
        w = (self.progress / self.anneal).clamp(max=1.0) if self.anneal > 0 else 1.0
        return {"loss_superfluous": w * kl}

    def on_step_end(self, progress):
        self.progress.fill_(progress.fraction)
