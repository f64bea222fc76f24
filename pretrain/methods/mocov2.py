"""MoCo v2 (Chen et al., 2020): InfoNCE against a queue of keys from a momentum encoder."""

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
    cfg.METHOD.MOCO.SHUFFLE_BN = True  # shuffle the key batch across ranks (needs > 1 rank)


@register_method("mocov2")
class MoCoV2(Method):
    copies_head = True

    def __init__(self, cfg):
        super().__init__(cfg)
        moco = cfg.METHOD.MOCO
        self.head = self.projector()
        self.key_encoder = MomentumTeacher(self.encoder, self.head)
        self.momentum, self.temperature = moco.MOMENTUM, moco.TEMPERATURE
        self.shuffle_bn = moco.SHUFFLE_BN
        # The queue and its write position are buffers: checkpointed and restored on resume.
        self.register_buffer("queue", F.normalize(torch.randn(moco.QUEUE_SIZE,
                                                              cfg.METHOD.PROJECTOR.OUT_DIM), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _keys(self, x):
        encoder, head = self.key_encoder.copies
        if not (self.shuffle_bn and get_world_size() > 1):
            return F.normalize(head(encoder(x)), dim=1)
        # Shuffle BN: the key batch is permuted across ranks so that BN statistics are not
        # computed over the same images as the queries' (the trivial-solution leak).
        n, world = x.shape[0], get_world_size()
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

    def on_step_end(self, iteration, max_iter):
        super().on_step_end(iteration, max_iter)
        self.key_encoder.update([self.encoder, self.head], self.momentum)
