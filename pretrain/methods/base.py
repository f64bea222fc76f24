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
    return METHODS[cfg.METHOD.NAME](cfg)


class Method(nn.Module):
    """An encoder (`self.encoder`, a torchvision ResNet) plus the method's heads.

    Subclasses implement `forward(views)`; the result's "features" hold, per view, the pooled
    backbone feature "h" (and the "taps" an objective asked for through `self.taps`).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = ResNetEncoder(cfg.MODEL.ARCH, cfg.MODEL.CIFAR_STEM)
        self.taps = ()  # stage names whose pooled outputs objectives need

    def projector(self, last_bn=False) -> nn.Module:
        p = self.cfg.METHOD.PROJECTOR
        return mlp(self.encoder.out_dim, p.HIDDEN_DIM, p.OUT_DIM, p.NUM_LAYERS, p.BN, last_bn)

    def encode(self, views):
        """Encode each view; returns (list of h, list of tap dicts)."""
        hs, taps = [], []
        for v in views:
            out = self.encoder(v, self.taps)
            h, t = out if self.taps else (out, {})
            hs.append(h)
            taps.append(t)
        return hs, taps

    def on_step_end(self, iteration: int, max_iter: int) -> None:
        """Called after each optimiser step (momentum encoders update here)."""


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
