"""Weighted k-nearest-neighbour classification on frozen, L2-normalised features
(Wu et al., 2018: votes weighted by exp(similarity / T)), and feature extraction."""

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..engine.distributed import get_rank, get_world_size


@torch.no_grad()
def extract_features(encoder, loader, device, channels_last=False):
    """(features, labels) of a loader's images on this rank; features L2-normalised, on CPU."""
    was_training = encoder.training
    encoder.eval()
    feats, labels = [], []
    for images, y in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        feats.append(F.normalize(encoder(images).float(), dim=1).cpu())
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


@torch.no_grad()
def knn_predict(train_f, train_y, test_f, k=200, temperature=0.1, num_classes=None, chunk=512):
    num_classes = num_classes or int(train_y.max()) + 1
    k = min(k, train_f.shape[0])
    preds = []
    for start in range(0, test_f.shape[0], chunk):
        sim = test_f[start:start + chunk] @ train_f.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes)
        votes.scatter_add_(1, train_y[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_top1(train_f, train_y, test_f, test_y, k=200, temperature=0.1) -> float:
    """Top-1 accuracy in percent."""
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    pred = knn_predict(train_f, train_y, test_f, k, temperature, num_classes)
    return 100.0 * (pred == test_y).float().mean().item()
