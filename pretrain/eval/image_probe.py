"""A linear probe trained on augmented images through the frozen encoder, every epoch (the
`infocl_imagenet` protocol, linear.py): InfoCL's eval_lr_imagenet.py, which gives the ImageNet
numbers quoted beside the InfoCL ImageNet configs (61.01 / 61.60 / 61.37).

Training images: a random resized crop to INPUT.EVAL_SIZE (default INPUT.SIZE: 224), scale
(0.08, 1), and a flip, drawn per image and epoch from a seeded generator (views.py), so a resumed
probe sees the epochs it would have; test images: resize to 256, centre crop 224
(transforms.eval_transform); both normalised as the run's evaluation. The encoder is in eval
mode (running BN statistics) and its features raw.

Several processes (torchrun, or SLURM tasks: DDP from the environment, as pretraining) split
each global batch of 256 and the test set; the layer is a DDP module, so the update is the one of
one process on the whole batch. The state (layer, optimiser, schedule, epoch, best) is written
atomically after every epoch to STATE_DIR/STATE_FILE and resumed from when present ("" for
no state: the probe then starts from the beginning each time).
"""

import logging
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl2det.distributed import get_rank, get_world_size
from ssl2det.errors import ConfigError
from ssl2det.io import atomic_write, load_checkpoint_file

from ..data import EpochBatchSampler, SeededViews, eval_transform, image_folder
from ..data.views import Flip, View, Views
from .linear import PROTOCOLS, ProbeResult, new_linear_layer, probe_scheduler

logger = logging.getLogger("pretrain")
STATE_FILE = "image_probe_state.pth"


def training_views(cfg) -> Views:
    i = cfg.INPUT
    normalize = (tuple(i.EVAL_MEAN or i.MEAN), tuple(i.EVAL_STD or i.STD))
    return Views([View(i.EVAL_SIZE or i.SIZE, (0.08, 1.0), [Flip()], normalize)])


def _test_accuracy(encoder, layer, loader, device) -> float:
    right = torch.zeros(2, device=device)
    with torch.no_grad():
        for images, labels in loader:
            predicted = layer(encoder(images.to(device)).float()).argmax(1)
            right += torch.stack([(predicted.cpu() == labels).sum(), torch.tensor(len(labels))]
                                 ).to(device, torch.float32)
    if get_world_size() > 1:
        dist.all_reduce(right)
    return (right[0] / right[1]).item() * 100


def train_probe_on_images(cfg, encoder, train_root, val_root, state_dir, device, epochs=100,
                          lr=None, batch_size=None, progress=None) -> ProbeResult:
    p = PROTOCOLS["infocl_imagenet"]
    lr, batch_size = lr or p.lr, batch_size or p.batch_size
    rank, world = get_rank(), get_world_size()
    train = image_folder(cfg, train_root)
    test = image_folder(cfg, val_root, eval_transform(cfg))
    if not train.same_classes(test):
        raise ConfigError(f"the probe's test folder {val_root} has other classes than its "
                          f"training folder {train_root}: {len(test.classes)} vs "
                          f"{len(train.classes)}")
    sampler = EpochBatchSampler(len(train), batch_size, rank, world, cfg.SEED)
    if sampler.batches_per_epoch == 0:
        raise ConfigError(f"{train_root} has {len(train)} images, fewer than one probe batch of "
                          f"{batch_size}")
    workers = cfg.DATA.NUM_WORKERS
    # eval_lr_imagenet.py's training transform, seeded per image and epoch
    loader = torch.utils.data.DataLoader(SeededViews(train, training_views(cfg), cfg.SEED),
                                         batch_sampler=sampler, num_workers=workers)
    test_subset = torch.utils.data.Subset(test, list(range(rank, len(test), world)))
    test_loader = torch.utils.data.DataLoader(test_subset, batch_size=batch_size,
                                              num_workers=workers)
    encoder.eval()
    torch.manual_seed(cfg.SEED)
    layer = new_linear_layer(encoder.out_dim, len(train.classes), p.init).to(device)
    model = torch.nn.parallel.DistributedDataParallel(layer) if world > 1 else layer
    optimizer = torch.optim.SGD(layer.parameters(), lr=lr, momentum=0.9)
    scheduler = probe_scheduler(optimizer, p, epochs, sampler.batches_per_epoch)
    settings = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "train_root": train_root,
                "classes": len(train.classes)}
    state_path = os.path.join(state_dir, STATE_FILE) if state_dir else ""
    result, start = ProbeResult(last=0.0, best=-1.0, best_epoch=0), 0
    if state_path and os.path.isfile(state_path):
        state = load_checkpoint_file(state_path)
        if state["settings"] != settings:
            raise ConfigError(f"{state_path} holds a probe with other settings "
                              f"({state['settings']}, now {settings}); remove it to start again")
        layer.load_state_dict(state["layer"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["epoch"]
        result = ProbeResult(**state["result"])
        logger.info(f"image probe: resumed after epoch {start} of {epochs}")
    for epoch in range(start, epochs):
        sampler.set_epoch(epoch, 0)
        total = torch.zeros((), device=device)
        for ((images,), labels), _ in zip(loader, range(sampler.batches_per_epoch)):
            with torch.no_grad():
                features = encoder(images.to(device)).float()
            loss = F.cross_entropy(model(features), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.detach()
        scheduler.step()
        if world > 1:  # each rank's loss is over its share of the batches: their mean
            dist.all_reduce(total)
            total /= world
        result.losses.append((total / sampler.batches_per_epoch).item())
        result.last = _test_accuracy(encoder, layer, test_loader, device)
        if result.last > result.best:
            result.best, result.best_epoch = result.last, epoch + 1
        if rank == 0 and state_path:
            os.makedirs(state_dir, exist_ok=True)
            state = {"settings": settings, "layer": layer.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "epoch": epoch + 1, "result": vars(result)}
            atomic_write(state_path, lambda f: torch.save(state, f))
        if progress:
            progress(epoch + 1, result.losses[-1])
    return result
