"""MoCo v2 (Chen et al., 2020): InfoNCE against a queue of keys from a momentum encoder."""

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fvcore.common.config import CfgNode as CN

from ssl2det.distributed import gather_no_grad, get_rank, get_world_size

from ..losses import info_nce_with_queue
from .base import Method, MomentumTeacher, register_method


def add_mocov2_config(cfg):
    cfg.METHOD.MOCO = CN()
    cfg.METHOD.MOCO.QUEUE_SIZE = 65536
    cfg.METHOD.MOCO.MOMENTUM = 0.999
    cfg.METHOD.MOCO.TEMPERATURE = 0.2
    # Keep BN from leaking which key belongs to which query: the key batch is shuffled across
    # ranks (MoCo's shuffle BN); in one process it is shuffled and its BN statistics computed
    # over SPLIT_BN_GROUPS groups of it (what MoCo's single-GPU CIFAR users do; ours: 8)
    cfg.METHOD.MOCO.SHUFFLE_BN = True
    cfg.METHOD.MOCO.SPLIT_BN_GROUPS = 8


logger = logging.getLogger(__name__)


@register_method("mocov2")
class MoCoV2(Method):
    copies_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        moco = cfg.METHOD.MOCO
        self.head = self.projector()
        self.key_encoder = MomentumTeacher(self.encoder, self.head)
        self.momentum, self.temperature = moco.MOMENTUM, moco.TEMPERATURE
        self.shuffle_bn, self.split_bn_groups = moco.SHUFFLE_BN, moco.SPLIT_BN_GROUPS
        if not self.shuffle_bn:
            logger.warning("METHOD.MOCO.SHUFFLE_BN False: unless BN is synchronised across "
                           "ranks, its statistics let the query find its key without learning "
                           "(MoCo, section 3.3); the loss may fall while features do not improve")
        # The queue and its write position are buffers: checkpointed and restored on resume.
        self.register_buffer("queue", F.normalize(torch.randn(moco.QUEUE_SIZE,
                                                              cfg.METHOD.PROJECTOR.OUT_DIM), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def views_to_encode(self, num_views):
        # the online encoder sees the query view only; objectives may need both
        return range(num_views) if self.objectives else range(1)

    @torch.no_grad()
    def _keys(self, x):
        encoder, head = self.key_encoder.copies
        if not self.shuffle_bn:
            return F.normalize(head(encoder(x)), dim=1)
        n, world = x.shape[0], get_world_size()
        if world == 1:  # split BN: each group of the shuffled batch has statistics of its own
            perm = torch.randperm(n, device=x.device)
            groups = perm.chunk(max(1, min(self.split_bn_groups, n // 2)))
            keys = torch.empty(n, self.queue.shape[1], device=x.device)
            for group in groups:
                keys[group] = F.normalize(head(encoder(x[group])), dim=1).to(keys.dtype)
            return keys
        # Shuffle BN: the key batch is permuted across ranks so that BN statistics are not
        # computed over the same images as the queries' (the trivial-solution leak).
        x_all = gather_no_grad(x)
        perm = torch.randperm(n * world, device=x.device)
        dist.broadcast(perm, src=0)
        mine = perm[get_rank() * n:(get_rank() + 1) * n]
        k_all = gather_no_grad(F.normalize(head(encoder(x_all[mine])), dim=1))
        unshuffled = torch.empty_like(k_all)
        unshuffled[perm] = k_all
        return unshuffled[get_rank() * n:(get_rank() + 1) * n]

    @torch.no_grad()
    def _enqueue(self, k):
        k = gather_no_grad(k)
        size, ptr = self.queue.shape[0], int(self.queue_ptr)
        idx = (ptr + torch.arange(k.shape[0], device=k.device)) % size
        self.queue[idx] = k.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + k.shape[0]) % size)

    def loss_terms(self, features):
        q = F.normalize(self.head(features.h[0]), dim=1)
        k = self._keys(features.views[1])
        loss = info_nce_with_queue(q, k, self.queue.clone().detach(), self.temperature)
        if self.training:
            self._enqueue(k)
        return {"loss_info_nce": loss}

    def on_step_end(self, progress):
        super().on_step_end(progress)
        self.key_encoder.update([self.encoder, self.head], self.momentum)
