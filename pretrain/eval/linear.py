"""Linear probes of a frozen encoder, trained as each protocol of protocols.py says (its
module docstring: what each protocol is, with the sources); the top-1 of the last epoch and of
the best test epoch are both returned: say which one a number is."""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .protocols import PROTOCOLS, Protocol


def new_linear_layer(in_dim: int, classes: int, init: str, generator=None) -> torch.nn.Linear:
    layer = torch.nn.Linear(in_dim, classes)
    if init == "normal":
        torch.nn.init.normal_(layer.weight, std=0.01, generator=generator)
        torch.nn.init.zeros_(layer.bias)
    return layer


def probe_scheduler(optimizer, protocol: Protocol, epochs: int, steps_per_epoch: int):
    """The protocol's schedule (stepped after each batch for cosine_per_step, else once an
    epoch)."""
    if protocol.schedule == "cosine_per_step":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    if protocol.schedule == "multistep_60_80":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, [60, 80], gamma=0.1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)


@dataclass
class ProbeResult:
    last: float  # test top-1 (%) after the last epoch
    best: float  # the best test top-1 over the epochs
    best_epoch: int
    losses: list = field(default_factory=list)  # mean training loss per epoch


def train_linear_probe(train_f, train_y, test_f, test_y, epochs=100, lr=None, momentum=0.9,
                       weight_decay=0.0, protocol="ours", batch_size=None, seed=0,
                       progress=None, num_classes=0) -> ProbeResult:
    """A linear layer on features computed once (the protocols whose `on_images` is False);
    `num_classes` outputs (default: the largest label + 1)."""
    p = PROTOCOLS[protocol]
    batch_size, lr, drop_last = batch_size or p.batch_size, lr or p.lr, p.drop_last
    if p.standardize:
        mean, std = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
        train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # (nn.Linear's own initialisation draws from the global RNG)
    classifier = new_linear_layer(train_f.shape[1], num_classes, p.init, g)
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    n = train_f.shape[0]
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    sched = probe_scheduler(opt, p, epochs, steps_per_epoch)
    per_step = p.schedule == "cosine_per_step"
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
            if per_step:
                sched.step()
            total += loss.item() * len(idx)
        if not per_step:
            sched.step()
        result.losses.append(total / len(perm))
        with torch.no_grad():
            result.last = (classifier(test_f).argmax(1) == test_y).float().mean().item() * 100
        if result.last > result.best:
            result.best, result.best_epoch = result.last, epoch + 1
        if progress:
            progress(epoch + 1, result.losses[-1])
    return result
