"""The shared base of the methods, and the registry `METHOD.NAME` picks from."""

import copy

import torch
from torch import nn

from ..models import build_encoder, mlp
from ..objectives import Features, Progress

METHODS = {}


def register_method(name, add_config=None):
    """Class decorator: the method METHOD.NAME `name` selects; `add_config(cfg)` adds its keys
    (get_cfg() calls every registered one)."""
    def wrap(cls):
        cls.name, cls.add_config = name, staticmethod(add_config) if add_config else None
        METHODS[name] = cls
        return cls
    return wrap


def ema_encoder_prefixes() -> tuple:
    """Where the methods keep a momentum (EMA) copy of the encoder in their state dicts: what
    the evaluation's `--ema` and the converter read (each method declares its own)."""
    return tuple(dict.fromkeys(cls.ema_encoder for cls in METHODS.values() if cls.ema_encoder))


class Method(nn.Module):
    name, add_config = "", None  # set by register_method
    #: where the method's momentum copy of the encoder sits in its state dict ("" for none):
    #: BYOL's target network, MoCo's key encoder (tests/test_architecture.py checks it)
    ema_encoder = ""

    """An encoder (`self.encoder`, a torchvision ResNet), the method's heads (`self.head`, the
    projector), and the objectives (pretrain/objectives) `build_method` attached.

    `forward(views)` lets each objective prepare the views (MRCL masks them), encodes them into
    `Features` (`encode`), asks the method for its loss terms (`loss_terms`, what subclasses
    implement) and adds each objective's terms: {"losses": {name: scalar}, "features": Features}.
    The engine sums the losses.

    How views are encoded is set by `build_method` from the objectives' declarations: `taps`
    (stages whose pooled outputs are kept) and `feature_noise` (h = mu + noise * eps while
    training; 0: deterministic).
    """

    #: True where the method copies its head into a momentum encoder at construction (BYOL,
    #: MoCo): an objective may then not replace the head, as the copy would not follow it.
    copies_head = False

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        self.objectives = nn.ModuleList()
        self.taps = ()
        self.feature_noise = 0.0

    def forward(self, views):
        inputs = views
        for objective in self.objectives:
            inputs = objective.prepare(inputs)
        features = self.encode(inputs, originals=views)
        losses = self.loss_terms(features)
        for objective in self.objectives:
            losses.update(objective(features))
        return {"losses": losses, "features": features}

    def loss_terms(self, features: Features) -> dict:
        """{name: scalar tensor}: the method's own loss from the encoded views."""
        raise NotImplementedError

    def views_to_encode(self, num_views: int) -> range:
        """Which views the online encoder computes features of: all (a method that uses fewer,
        like MoCo, says so; objectives may need all)."""
        return range(num_views)

    def encode(self, views, originals=None) -> Features:
        hs, mus, taps = [], [], []
        for v in (views[i] for i in self.views_to_encode(len(views))):
            out = self.encoder(v, self.taps)
            mu, t = out if self.taps else (out, {})
            noisy = self.training and self.feature_noise > 0
            hs.append(mu + self.feature_noise * torch.randn_like(mu) if noisy else mu)
            mus.append(mu)
            taps.append(t)
        return Features(h=hs, mu=mus, taps=taps, views=list(views),
                        originals=list(originals if originals is not None else views))

    def projector(self, last_bn=False) -> nn.Module:
        p = self.cfg.METHOD.PROJECTOR
        return mlp(self.encoder.out_dim, p.HIDDEN_DIM, p.OUT_DIM, p.NUM_LAYERS, p.BN, last_bn)

    def on_step_end(self, progress: Progress) -> None:
        """Called after each optimiser step: momentum encoders update here, and objectives
        with schedules."""
        for objective in self.objectives:
            objective.on_step_end(progress)


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
