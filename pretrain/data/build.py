"""Data loaders for pretraining and for feature extraction."""

import torch

from ssl2det.errors import DatasetError

from .datasets import ImageFiles, SeededViews
from .device_bank import DeviceImageBank
from .sampler import EpochBatchSampler
from .transforms import build_view_transform, eval_transform


def _loader_kwargs(cfg, persistent):
    workers = cfg.DATA.NUM_WORKERS
    return dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0 and persistent)


def build_pretrain_loader(cfg, rank: int, world: int, device=None):
    """(loader, sampler); the sampler's `set_epoch(epoch, start_batch)` positions it. With
    DATA.DECODE_ONCE the "loader" is the training set decoded into `device`'s memory."""
    if not cfg.DATA.ROOT:
        raise DatasetError("DATA.ROOT is empty: set it to the training image folder "
                           "(ROOT/<class>/<image>.jpg)")
    folder = ImageFiles(cfg.DATA.ROOT, bad_images=cfg.DATA.BAD_IMAGES, report_dir=cfg.OUTPUT_DIR)
    sampler = EpochBatchSampler(len(folder), cfg.SOLVER.BATCH_SIZE, rank, world, cfg.SEED)
    if sampler.batches_per_epoch == 0:
        raise DatasetError(f"DATA.ROOT {cfg.DATA.ROOT} has {len(folder)} images, fewer than one "
                           f"batch (SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE}); lower the batch size")
    if cfg.DATA.DECODE_ONCE:
        return DeviceImageBank(folder, sampler, cfg, device or torch.device("cpu")), sampler
    dataset = SeededViews(folder, build_view_transform(cfg), cfg.SEED)
    # The loader gets its own generator so creating an iterator never draws from the global RNG
    # (which the checkpoint restores on resume).
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                         generator=torch.Generator(),
                                         **_loader_kwargs(cfg, cfg.DATA.PERSISTENT_WORKERS))
    return loader, sampler


def build_eval_loader(cfg, root: str, indices=None):
    """Deterministic loader of (image, label) for feature extraction, optionally a subset."""
    dataset = ImageFiles(root, eval_transform(cfg), bad_images=cfg.DATA.BAD_IMAGES)
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.KNN.BATCH_SIZE, shuffle=False,
                                       **_loader_kwargs(cfg, persistent=False))
