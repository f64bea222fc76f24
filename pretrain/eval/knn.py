"""Weighted k-nearest-neighbour classification on frozen, L2-normalised features
(Wu et al., 2018: votes weighted by exp(similarity / T))."""

import torch


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
