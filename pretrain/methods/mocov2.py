"""MoCo v2 (Chen et al., 2020): InfoNCE against a queue of keys from a momentum encoder; with
INPUT.JIGSAW.ENABLED, also InfoMin's PIRL-style jigsaw branch (Tian et al., 2020, as PyContrast
builds it): the patches of a third view go through the same encoder and a jigsaw head into one
embedding per image, contrasted with the same key and queue; the loss is
(1 - beta) * NCE + beta * jigsaw NCE (learning/contrast_trainer.py:283-288, beta 0.5 from
options/train_options.py:13)."""

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fvcore.common.config import CfgNode as CN
from torch import nn

from ssl2det.distributed import gather_no_grad, get_rank, get_world_size

from ..losses import info_nce_with_queue
from ..models.split_bn import SplitBatchNorm
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
    # the jigsaw branch's weight beta (with INPUT.JIGSAW.ENABLED): PyContrast's 0.5
    cfg.METHOD.MOCO.JIGSAW_BETA = 0.5


class JigsawHead(nn.Module):
    """PyContrast's JigsawHead (networks/util.py:15-56): each patch's pooled feature through
    `embed` (InfoMin's "mlp" head: 2048 -> 2048 -> 128), the image's patch embeddings in a random
    order concatenated, a linear layer to one embedding, L2-normalised. The orders are drawn for
    the global batch from a generator seeded by the step (`step`, a checkpointed buffer), so
    they do not depend on how the batch is split over ranks, and resume exactly."""

    def __init__(self, embed: nn.Module, dim: int, patches: int):
        super().__init__()
        self.embed, self.patches = embed, patches
        self.aggregate = nn.Linear(dim * patches, dim)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def orders(self, n: int) -> torch.Tensor:
        """(n, patches): this rank's images' patch orders, from the global batch's."""
        g = torch.Generator().manual_seed(int(self.step))
        world, rank = get_world_size(), get_rank()
        every = torch.stack([torch.randperm(self.patches, generator=g) for _ in range(n * world)])
        return every[rank * n:(rank + 1) * n]

    def forward(self, patch_features: torch.Tensor) -> torch.Tensor:
        """(n * patches, d) features, image-major -> (n, dim) embeddings."""
        x = self.embed(patch_features)
        n = x.shape[0] // self.patches
        order = self.orders(n).to(x.device)
        x = x.view(n, self.patches, -1)
        x = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if self.training:
            self.step += 1
        return F.normalize(self.aggregate(x.reshape(n, -1)), dim=1)


logger = logging.getLogger(__name__)


@register_method("mocov2", add_mocov2_config)
class MoCoV2(Method):
    copies_head = True
    ema_encoder = "key_encoder.copies.0."

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
        j = cfg.INPUT.JIGSAW
        self.jigsaw = JigsawHead(self.projector(), cfg.METHOD.PROJECTOR.OUT_DIM,
                                 j.GRID * j.GRID) if j.ENABLED else None
        self.beta = moco.JIGSAW_BETA

    def views_to_encode(self, num_views):
        # the online encoder sees the query view only; objectives may need both (the jigsaw's
        # patches, the last view, are the jigsaw branch's)
        return range(min(num_views, 2)) if self.objectives else range(1)

    @torch.no_grad()
    def _keys(self, x):
        encoder, head = self.key_encoder.copies
        if not self.shuffle_bn:
            return F.normalize(head(encoder(x)), dim=1)
        n, world = x.shape[0], get_world_size()
        if world == 1:  # split BN: each group of the shuffled batch has statistics of its own
            perm = torch.randperm(n, device=x.device)
            # (an encoder whose BN splits every batch itself, MODEL.BN_GROUP_IMAGES, takes the
            # shuffled batch whole)
            splits_itself = any(isinstance(m, SplitBatchNorm) for m in encoder.modules())
            groups = perm.chunk(1 if splits_itself else max(1, min(self.split_bn_groups, n // 2)))
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
        queue = self.queue.clone().detach()
        loss = info_nce_with_queue(q, k, queue, self.temperature)
        terms = {"loss_info_nce": loss}
        if self.jigsaw is not None:
            patches = features.views[2]  # (n, grid * grid, 3, p, p)
            q_jig = self.jigsaw(self.encoder(patches.flatten(0, 1)))
            terms = {"loss_info_nce": (1 - self.beta) * loss,
                     "loss_jigsaw": self.beta * info_nce_with_queue(q_jig, k, queue,
                                                                     self.temperature)}
        if self.training:
            self._enqueue(k)
        return terms

    def on_step_end(self, progress):
        super().on_step_end(progress)
        self.key_encoder.update([self.encoder, self.head], self.momentum)
