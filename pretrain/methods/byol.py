"""BYOL (Grill et al., 2020): an online network predicts an EMA target network's projection."""

import math

import torch
from fvcore.common.config import CfgNode as CN

from ..losses import negative_cosine
from ..models import mlp
from .base import Method, MomentumTeacher, register_method


def add_byol_config(cfg):
    cfg.METHOD.BYOL = CN()
    cfg.METHOD.BYOL.PREDICTOR_HIDDEN_DIM = 4096
    cfg.METHOD.BYOL.MOMENTUM_BASE = 0.996  # target EMA rate, raised to 1 by a cosine schedule
    # the schedule's step: every optimiser step (BYOL), or once per epoch (InfoCL's code)
    cfg.METHOD.BYOL.MOMENTUM_PER_EPOCH = False


@register_method("byol", add_byol_config)
class BYOL(Method):
    copies_head = True
    ema_encoder = "target.copies.0."

    def __init__(self, cfg):
        super().__init__(cfg)
        out = cfg.METHOD.PROJECTOR.OUT_DIM
        self.head = self.projector()
        self.predictor = mlp(out, cfg.METHOD.BYOL.PREDICTOR_HIDDEN_DIM, out, 2, True)
        self.target = MomentumTeacher(self.encoder, self.head)
        self.momentum_base = cfg.METHOD.BYOL.MOMENTUM_BASE
        self.momentum_per_epoch = cfg.METHOD.BYOL.MOMENTUM_PER_EPOCH

    def loss_terms(self, features):
        z1, z2 = (self.head(h) for h in features.h)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            encoder, head = self.target.copies
            t1, t2 = (head(encoder(v)) for v in features.views)
        return {"loss_byol": negative_cosine(p1, t2) + negative_cosine(p2, t1)}

    def target_momentum(self, progress):
        """BYOL's schedule: base -> 1 along a cosine over training."""
        done = progress.epoch_fraction if self.momentum_per_epoch else progress.fraction
        return 1 - (1 - self.momentum_base) * (math.cos(math.pi * done) + 1) / 2

    def on_step_end(self, progress):
        super().on_step_end(progress)
        self.target.update([self.encoder, self.head], self.target_momentum(progress))
