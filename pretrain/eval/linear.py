"""Linear probes of a frozen encoder, by protocol (`PROTOCOLS`):

ours             features computed once (centre crop), standardised with the training set's
                 statistics, batch 256, SGD 0.01, cosine stepped per batch, the weights from
                 N(0, 0.01); the top-1 of the *last* epoch is the result. For speed: the papers
                 (except InfoCL on CIFAR) train on augmented images through the frozen encoder;
                 precomputed features make a 100-epoch probe take seconds and land within about
                 a point of that.
infocl           InfoCL's eval_lr.py (CIFAR-10, STL-10): features computed once, raw, batch 128
                 (the last partial batch dropped), SGD lr 0.01 with momentum 0.9, x0.1 at epochs
                 60 and 80, PyTorch's default initialisation of the layer.
infocl_imagenet  InfoCL's eval_lr_imagenet.py: the layer trained on augmented images through the
                 frozen encoder every epoch (random resized crop + flip, so features cannot be
                 computed once; image_probe.py), raw features, batch 256 (drop last), SGD lr 0.3
                 with momentum 0.9 and no weight decay, a cosine over the epochs stepped once per
                 epoch (CosineAnnealingLR), weights from N(0, 0.01), biases 0; tested at 256 ->
                 224 centre crop.
InfoCL reports the *best* test epoch; both last and best are returned: say which one a number is.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Protocol:
    standardize: bool  # features standardised with the training set's mean and std
    batch_size: int
    lr: float
    schedule: str  # "cosine_per_step", "multistep_60_80", "cosine_per_epoch"
    drop_last: bool  # the last partial batch of an epoch dropped
    init: str  # "normal": weights N(0, 0.01), biases 0; "pytorch": nn.Linear's own
    on_images: bool  # trained on augmented images each epoch (image_probe.py)
    source: str


PROTOCOLS = {
    "ours": Protocol(True, 256, 0.01, "cosine_per_step", False, "normal", False, "ours"),
    "infocl": Protocol(False, 128, 0.01, "multistep_60_80", True, "pytorch", False,
                       "InfoCL SimCLR/eval_lr.py:15 (batch), :104-109 (drop_last), :133-135 "
                       "(layer, SGD 0.01, MultiStepLR [60, 80])"),
    "infocl_imagenet": Protocol(False, 256, 0.3, "cosine_per_epoch", True, "normal", True,
                                "InfoCL SimCLR/eval_lr_imagenet.py:15-16 (batch 256, 100 "
                                "epochs), :26 (lr 0.3), :80-90 (augmentation), :111-116 "
                                "(shuffle, drop_last), :140-144 (init, SGD, cosine)"),
}


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
