"""Linear probe on frozen features: a linear classifier trained with SGD on features computed
once (centre crop, no augmentation), standardised with the training set's statistics.

Our choice for speed: the papers train the probe on augmented images through the frozen
encoder; precomputed features make a 100-epoch probe take seconds, and typically land within
about a point of the augmented protocol. The top-1 of the *last* epoch is reported.
"""

import math

import torch
import torch.nn.functional as F


def train_linear_probe(train_f, train_y, test_f, test_y, epochs=100, lr=0.01, batch_size=256,
                       momentum=0.9, weight_decay=0.0, seed=0, progress=None):
    """Returns (test top-1 in percent, list of per-epoch mean training losses)."""
    mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    classifier = torch.nn.Linear(train_f.shape[1], num_classes)
    torch.nn.init.normal_(classifier.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(classifier.bias)
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    steps_per_epoch = math.ceil(train_f.shape[0] / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    history = []
    for _ in range(epochs):
        perm = torch.randperm(train_f.shape[0], generator=g)
        total = 0.0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(classifier(train_f[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(perm))
        if progress:
            progress(len(history), history[-1])
    with torch.no_grad():
        top1 = (classifier(test_f).argmax(1) == test_y).float().mean().item() * 100
    return top1, history
