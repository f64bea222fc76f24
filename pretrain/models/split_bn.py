"""Batch norm over equal splits of a process's batch: what a model replicated over G GPUs by
DataParallel, or G processes of a per-GPU batch, normalise over, on any layout. MoCo v2 and
PyContrast normalise per GPU over 32 images (8 GPUs x 32); on fewer processes their configs
split each process's batch into groups of 32 (MODEL.BN_GROUP_IMAGES), as ghost batch norm does.

Each input is split into `groups` equal parts, whatever its size (images, or the jigsaw
branch's 9 patches per image: 32 images' worth either way). The running statistics follow the
first part only, as DataParallel keeps its first replica's and a checkpoint the first rank's."""

import torch
import torch.nn.functional as F
from torch import nn


class SplitBatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, groups: int, **kwargs):
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def forward(self, x):
        if not self.training or self.groups == 1 or x.shape[0] < self.groups:
            return super().forward(x)
        parts = x.chunk(self.groups)
        first = super().forward(parts[0])  # updates the running statistics
        rest = [F.batch_norm(p, None, None, self.weight, self.bias, True, 0.0, self.eps)
                for p in parts[1:]]
        return torch.cat([first, *rest])


def split_batch_norm(module: nn.Module, groups: int, skip=()) -> nn.Module:
    """Every BatchNorm2d of `module` (but those in the subtrees `skip`) as a SplitBatchNorm of
    `groups` parts, sharing its parameters and statistics."""
    skip = {id(m) for m in skip}

    def convert(m):
        if id(m) in skip:
            return m
        if type(m) is nn.BatchNorm2d:
            out = SplitBatchNorm(m.num_features, groups, eps=m.eps, momentum=m.momentum,
                                 affine=m.affine, track_running_stats=m.track_running_stats)
            out.load_state_dict(m.state_dict())
            if m.affine:
                out.weight, out.bias = m.weight, m.bias
            return out
        for name, child in m.named_children():
            setattr(m, name, convert(child))
        return m
    return convert(module)
