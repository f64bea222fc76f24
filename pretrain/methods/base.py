"""The shared base of the methods, and the registry `METHOD.NAME` picks from."""

import copy

import torch
from torch import nn

from ..models import ResNetEncoder, mlp

METHODS = {}


def register_method(name):
    def wrap(cls):
        METHODS[name] = cls
        return cls
    return wrap


def build_method(cfg) -> "Method":
    """The method of METHOD.NAME with the objectives of OBJECTIVES attached."""
    from ..objectives import OBJECTIVES

    method = METHODS[cfg.METHOD.NAME](cfg)
    for name in cfg.OBJECTIVES:
        method.objectives.append(OBJECTIVES[name](cfg, method))
    return method


class Method(nn.Module):
    """An encoder (`self.encoder`, a torchvision ResNet), the method's heads, and the objectives
    (pretrain/objectives) attached to it.

    Subclasses implement `compute(views)` -> {"losses": {...}, "features": {...}}, whose
    "features" hold, per view, the pooled backbone feature "h" (and the "taps" objectives asked
    for through `self.taps`). `forward` lets each objective prepare the views (MRCL masks them),
    runs `compute`, and adds each objective's loss terms.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNetEncoder(cfg.MODEL.ARCH, cfg.MODEL.CIFAR_STEM)
        self.taps = ()  # stage names whose pooled outputs objectives need
        # InfoCL LBE makes h stochastic while training: h = mu + sigma * eps (0: deterministic)
        self.feature_sigma = 0.0
        self.objectives = nn.ModuleList()

    def forward(self, views):
        inputs = views
        for objective in self.objectives:
            inputs = objective.prepare(inputs)
        out = self.compute(inputs)
        features = out["features"]
        features["views"], features["originals"], features["mu"] = inputs, views, self.last_mu
        for objective in self.objectives:
            out["losses"].update(objective(out["features"]))
        return out

    def compute(self, views):
        raise NotImplementedError

    def projector(self, last_bn=False) -> nn.Module:
        p = self.cfg.METHOD.PROJECTOR
        return mlp(self.encoder.out_dim, p.HIDDEN_DIM, p.OUT_DIM, p.NUM_LAYERS, p.BN, last_bn)

    def encode(self, views):
        """Encode each view; returns (list of h, list of tap dicts). The noise-free features
        ("mu") are kept in `self.last_mu` for the LBE objective."""
        hs, taps, self.last_mu = [], [], []
        for v in views:
            out = self.encoder(v, self.taps)
            h, t = out if self.taps else (out, {})
            self.last_mu.append(h)
            if self.training and self.feature_sigma > 0:
                h = h + self.feature_sigma * torch.randn_like(h)
            hs.append(h)
            taps.append(t)
        return hs, taps

    def on_step_end(self, iteration: int, max_iter: int) -> None:
        """Called after each optimiser step: momentum encoders update here, and objectives
        with schedules."""
        for objective in self.objectives:
            objective.on_step_end(iteration, max_iter)


class MomentumTeacher(nn.Module):
    """A frozen copy of some modules, updated as an exponential moving average of them."""

    def __init__(self, *modules: nn.Module):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(m) for m in modules)
        for p in self.copies.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, modules, momentum: float) -> None:
        for copy_, source in zip(self.copies, modules):
            for t, s in zip(copy_.parameters(), source.parameters()):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
            for t, s in zip(copy_.buffers(), source.buffers()):
                t.copy_(s)
