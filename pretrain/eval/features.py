"""Frozen-encoder features for the kNN monitor, the kNN tool and the linear probe."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl2det.distributed import get_rank, get_world_size
from ssl2det.io import CheckpointError, load_checkpoint_file

from ..checkpoint_format import ONLINE_ENCODER_PREFIX
from ..methods import ema_encoder_prefixes
from ..models import ResNetEncoder, build_encoder


def load_encoder(cfg, checkpoint: str = "", ema: bool = False) -> ResNetEncoder:
    """The encoder of `cfg` (MODEL.ARCH, MODEL.CIFAR_STEM) with a pretraining checkpoint's
    weights (its online encoder, or with `ema` its momentum encoder); random weights without
    a checkpoint."""
    encoder = build_encoder(cfg)
    if not checkpoint:
        return encoder
    state = load_checkpoint_file(checkpoint).get("model", {})
    prefixes = ema_encoder_prefixes() if ema else (ONLINE_ENCODER_PREFIX,)
    for prefix in prefixes:
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            break
    else:
        raise CheckpointError(f"{checkpoint} has no {'momentum ' if ema else ''}encoder weights "
                              f"(keys starting with {' or '.join(prefixes)})")
    try:
        encoder.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint} does not fit MODEL.ARCH {cfg.MODEL.ARCH} "
                              f"(CIFAR_STEM {cfg.MODEL.CIFAR_STEM}): {str(e)[:300]}") from None
    return encoder


@torch.no_grad()
def extract_features(encoder, loader, device, channels_last=False, normalize=True):
    """(features, labels) of a loader's images on this rank, on the CPU; L2-normalised unless
    `normalize` is False."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for images, y in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        f = encoder(images).float()
        feats.append((F.normalize(f, dim=1) if normalize else f).cpu())
        labels.append(y)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def gather_features(feats, labels):
    """Concatenate every rank's (features, labels) on every rank."""
    if get_world_size() == 1:
        return feats, labels
    parts = [None] * get_world_size()
    dist.all_gather_object(parts, (feats, labels))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def shard(n: int):
    """This rank's strided share of n items."""
    return list(range(get_rank(), n, get_world_size()))
