"""Linear probe on frozen features: a linear classifier trained with SGD on features computed
once (centre crop, no augmentation), under one of two protocols (`PROTOCOLS`):

ours    features standardised with the training set's statistics, batch 256, cosine schedule;
        the top-1 of the *last* epoch is the result. For speed: the papers (except InfoCL on
        CIFAR) train on augmented images through the frozen encoder; precomputed features make
        a 100-epoch probe take seconds and land within about a point of that.
infocl  InfoCL's eval_lr.py: raw features, batch 128 (the last partial batch dropped), SGD lr
        0.01 with momentum 0.9, x0.1 at epochs 60 and 80, no augmentation; the paper reports the
        *best* test epoch. Both last and best are returned; say which one a number is.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

#: protocol -> (standardise, batch size, schedule, drop the last partial batch)
PROTOCOLS = {"ours": (True, 256, "cosine", False), "infocl": (False, 128, "multistep", True)}


@dataclass
class ProbeResult:
    last: float  # test top-1 (%) after the last epoch
    best: float  # the best test top-1 over the epochs
    best_epoch: int
    losses: list = field(default_factory=list)  # mean training loss per epoch


def train_linear_probe(train_f, train_y, test_f, test_y, epochs=100, lr=0.01, momentum=0.9,
                       weight_decay=0.0, protocol="ours", batch_size=None, seed=0,
                       progress=None) -> ProbeResult:
    standardize, default_batch, schedule, drop_last = PROTOCOLS[protocol]
    batch_size = batch_size or default_batch
    if standardize:
        mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
        train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    classifier = torch.nn.Linear(train_f.shape[1], num_classes)
    torch.nn.init.normal_(classifier.weight, std=0.01, generator=g)
    torch.nn.init.zeros_(classifier.bias)
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    n = train_f.shape[0]
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    if schedule == "cosine":  # stepped per batch
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps_per_epoch)
    else:  # stepped per epoch
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [60, 80], gamma=0.1)
    result = ProbeResult(last=0.0, best=-1.0, best_epoch=0)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)[:steps_per_epoch * batch_size if drop_last else n]
        total = 0.0
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(classifier(train_f[idx]), train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if schedule == "cosine":
                sched.step()
            total += loss.item() * len(idx)
        if schedule != "cosine":
            sched.step()
        result.losses.append(total / len(perm))
        with torch.no_grad():
            result.last = (classifier(test_f).argmax(1) == test_y).float().mean().item() * 100
        if result.last > result.best:
            result.best, result.best_epoch = result.last, epoch + 1
        if progress:
            progress(epoch + 1, result.losses[-1])
    return result
