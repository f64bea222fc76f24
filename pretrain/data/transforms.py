"""The deterministic evaluation transform of the kNN monitor and the linear probe (torchvision
transforms v2). The training views are made in views.py."""

import torch
from torchvision.transforms import v2


def eval_transform(cfg):
    """Resize + centre crop to INPUT.EVAL_SIZE (default: the training size): small images
    (up to 96 px) to that size, large ones by the ImageNet convention (resize to size * 256/224,
    crop); normalised with INPUT.EVAL_MEAN / EVAL_STD (default: the training ones)."""
    i = cfg.INPUT
    size = i.EVAL_SIZE or i.SIZE
    resize = size if size <= 96 else int(round(size * 256 / 224))
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(tuple(i.EVAL_MEAN or i.MEAN), tuple(i.EVAL_STD or i.STD))])
