"""Stage two's configuration: detectron2's CfgNode with this project's keys, read from a file
and `KEY VALUE` overrides, adapted to the machine, then detectron2's default_setup."""

import os

import torch
from detectron2.config import get_cfg as detectron2_defaults
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssl2det.config import get_key, set_key
from ssl2det.errors import ConfigError

#: Config keys that name a normalisation layer.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM", "MODEL.SEM_SEG_HEAD.NORM")


def add_transfer_config(cfg):
    # An unreadable training image: "skip" (warn, list in OUTPUT_DIR/bad_images.txt, map another
    # image) or "error". Ours; detectron2 itself stops with a traceback.
    cfg.DATALOADER.BAD_IMAGES = "skip"


def get_cfg():
    """detectron2's defaults with this project's keys."""
    cfg = detectron2_defaults()
    add_transfer_config(cfg)
    return cfg


def adapt_to_machine(cfg):
    """Make a paper-protocol config run where the user is: the CPU when no GPU is visible, and
    a SyncBN that works there (torch's SyncBatchNorm needs GPUs; detectron2's naiveSyncBN
    synchronises over any backend and is plain BN in one process). Returns what it changed."""
    changes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        changes.append("MODEL.DEVICE cuda -> cpu (no GPU visible)")
    if cfg.MODEL.DEVICE == "cpu":
        for key in NORM_KEYS:
            if get_key(cfg, key) == "SyncBN":
                set_key(cfg, key, "naiveSyncBN")
                changes.append(f"{key} SyncBN -> naiveSyncBN (CPU)")
    return changes


def setup(args):
    """Config from file + overrides, adapted to the machine, then detectron2's default_setup
    (output folder, logging, config.yaml, seed)."""
    cfg = get_cfg()
    if not os.path.isfile(args.config_file):
        raise ConfigError(f"config file not found: {args.config_file}")
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"bad config ({args.config_file} + overrides): {e}") from None
    if cfg.DATALOADER.BAD_IMAGES not in ("skip", "error"):
        raise ConfigError(f"DATALOADER.BAD_IMAGES = {cfg.DATALOADER.BAD_IMAGES!r} is not one of "
                          "skip, error")
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS {weights} does not exist. Convert a pretraining "
                          "checkpoint with tools/convert_to_d2.py, or pass MODEL.WEIGHTS '' to "
                          "start from random weights.")
    changes = adapt_to_machine(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="transfer")
    for change in changes:
        logger.warning(f"adapted to this machine: {change}")
    return cfg
