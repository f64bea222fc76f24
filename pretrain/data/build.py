"""Data loaders for pretraining and for feature extraction."""

import logging
import os

import torch

from ssl2det.distributed import get_rank, get_world_size
from ssl2det.errors import ConfigError, DatasetError

from .datasets import SeededViews
from .layouts import layout_of
from .device_bank import DeviceImageBank
from .device_decode import DecodeOnDevice, EncodedViews, collate_encoded
from .sampler import EpochBatchSampler
from .transforms import eval_transform
from .views import build_views

logger = logging.getLogger("pretrain")


def augment_on_device(cfg, device) -> bool:
    """INPUT.AUGMENT_ON_DEVICE, where None (the default) means: on a CUDA device, for the
    recipes the device path has (simclr, without a jigsaw view), because loader cores cannot
    feed a GPU otherwise;
    elsewhere the loader-side recipe. The choice is logged."""
    chosen = cfg.INPUT.AUGMENT_ON_DEVICE
    if chosen is not None:
        return chosen
    chosen = (device.type == "cuda" and cfg.INPUT.AUGMENTATION == "simclr"
              and not cfg.INPUT.JIGSAW.ENABLED)
    where = (f"augmenting batches on {device}: loader workers decode, crop and flip"
             if chosen else "augmenting in the loader workers")
    logger.info(f"INPUT.AUGMENT_ON_DEVICE is not set: {where} (set it to True or False to "
                "choose)")
    return chosen


def _loader_kwargs(cfg, persistent):
    workers = cfg.DATA.NUM_WORKERS
    return dict(num_workers=workers, pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0 and persistent)


def file_index_dir(cfg) -> str:
    """Where image folders' file indexes are kept (DATA.FILE_INDEX, DATA.INDEX_DIR); "" for
    none."""
    if not cfg.DATA.FILE_INDEX:
        return ""
    return cfg.DATA.INDEX_DIR or os.path.join(cfg.OUTPUT_DIR, "file_index")


def image_folder(cfg, root: str, transform=None, report_bad_images: bool = False):
    """The images at `root` (in its layout: a folder, an archive or shards; layouts.py) with the
    config's bad-image policy and file index. Under DDP rank 0 lists the folder or reads the
    tar headers (and writes the index) while the others wait, then they read the index instead
    of listing 1.28M files each (on nodes that cannot see it they list it themselves)."""
    layout = layout_of(root)
    if cfg.DATA.REBUILD_FILE_INDEX and file_index_dir(cfg) and get_rank() == 0:
        path = layout.index_path(file_index_dir(cfg), root)
        if os.path.exists(path):
            os.remove(path)  # listed again below, and written anew
            logger.info(f"DATA.REBUILD_FILE_INDEX: {root} is listed again")

    def build():
        return layout.open(root, transform, bad_images=cfg.DATA.BAD_IMAGES,
                           report_dir=cfg.OUTPUT_DIR if report_bad_images else "",
                           index_dir=file_index_dir(cfg))
    if get_world_size() == 1 or not file_index_dir(cfg):
        return build()
    if get_rank() == 0:
        folder = build()
    torch.distributed.barrier()
    return folder if get_rank() == 0 else build()


def build_pretrain_loader(cfg, rank: int, world: int, device=None, on_device: bool = False):
    """(loader, sampler); the sampler's `set_epoch(epoch, start_batch)` positions it. With
    DATA.DECODE_ONCE the "loader" is the training set decoded into `device`'s memory; with
    `on_device` (augment_on_device) the loader gives uint8 crops for DeviceAugment."""
    if not cfg.DATA.ROOT:
        raise DatasetError("DATA.ROOT is empty: set it to the training image folder "
                           "(ROOT/<class>/<image>.jpg)")
    folder = image_folder(cfg, cfg.DATA.ROOT, report_bad_images=True)
    sampler = EpochBatchSampler(len(folder), cfg.SOLVER.BATCH_SIZE, rank, world, cfg.SEED)
    if sampler.batches_per_epoch == 0:
        raise DatasetError(f"DATA.ROOT {cfg.DATA.ROOT} has {len(folder)} images, fewer than one "
                           f"batch (SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE}); lower the batch size")
    if cfg.DATA.DECODE_ONCE:
        return DeviceImageBank(folder, sampler, cfg, device or torch.device("cpu")), sampler
    decode_on_device = cfg.INPUT.DECODE_ON_DEVICE
    if decode_on_device and not on_device:
        raise ConfigError("INPUT.DECODE_ON_DEVICE needs the augmentation on the device: set "
                          "INPUT.AUGMENT_ON_DEVICE True (its default is on only with CUDA)")
    views = (EncodedViews(cfg.INPUT.SIZE, cfg.INPUT.CROP_SCALE) if decode_on_device
             else build_views(cfg, on_device))
    # The loader gets its own generator so creating an iterator never draws from the global RNG
    # (which the checkpoint restores on resume).
    loader = torch.utils.data.DataLoader(SeededViews(folder, views, cfg.SEED),
                                         batch_sampler=sampler, generator=torch.Generator(),
                                         collate_fn=collate_encoded if decode_on_device else None,
                                         **_loader_kwargs(cfg, cfg.DATA.PERSISTENT_WORKERS))
    if decode_on_device:
        return DecodeOnDevice(loader, device or torch.device("cpu"), cfg.INPUT.SIZE,
                              folder.bad), sampler
    return loader, sampler


def build_eval_loader(cfg, root: str, indices=None):
    """Deterministic loader of (image, label) for feature extraction, optionally a subset."""
    dataset = image_folder(cfg, root, eval_transform(cfg))
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.KNN.BATCH_SIZE, shuffle=False,
                                       **_loader_kwargs(cfg, persistent=False))
