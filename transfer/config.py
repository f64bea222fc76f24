"""Stage two's configuration: detectron2's CfgNode with this project's keys, read from a file
and `KEY VALUE` overrides, adapted to the machine, then detectron2's default_setup."""

import logging
import os

import torch
from detectron2.config import get_cfg as detectron2_defaults
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssl2det.config import (check_config_chain, describe_changes, get_key, resume_changes,
                            set_key)
from ssl2det.errors import ConfigError
from ssl2det.output_dir import claim_output_dir


#: Config keys that name a normalisation layer.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM", "MODEL.SEM_SEG_HEAD.NORM")


#: Keys that change how a run runs, not its results (where outputs go, devices, workers,
#: periods): the pipeline leaves a finished stage alone when only these change.
RUNTIME_KEYS = ("OUTPUT_DIR", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.CHECKPOINTS_TO_KEEP",
                "DATALOADER.NUM_WORKERS",
                "DATALOADER.BAD_IMAGES", "MODEL.DEVICE", "VIS_PERIOD", "CUDNN_BENCHMARK")
#: What a resumed fine-tuning (--resume) may change: the runtime keys, its length, data,
#: evaluation and initial weights (unused by a resume), and its precision (a GPU run resumed on
#: a CPU loses float16 autocast: adapt_to_machine; the resume's warning names the change). Any
#: other change (the model, classes, input sizes, the optimiser) refuses the resume.
RESUMABLE_CHANGES = RUNTIME_KEYS + ("SOLVER.MAX_ITER", "SOLVER.STEPS", "DATASETS.", "TEST.",
                                    "MODEL.WEIGHTS", "SOLVER.AMP.ENABLED")


def add_transfer_config(cfg):
    # An unreadable training image: "skip" (warn, list in OUTPUT_DIR/bad_images.txt, map another
    # image) or "error". Ours; detectron2 itself stops with a traceback.
    cfg.DATALOADER.BAD_IMAGES = "skip"
    # Semantic segmentation: scale each training image by a factor from this (min, max) range
    # before the crop (MoCo's VOC protocol: (0.5, 2.0)); empty: detectron2's shortest-edge resize.
    cfg.INPUT.RANDOM_SCALE = ()
    # The FCN head's dilation (transfer/modeling.py; MoCo: 6).
    cfg.MODEL.SEM_SEG_HEAD.DILATION = 6
    # Periodic checkpoints kept (the newest N; model_final.pth and the one last_checkpoint
    # names always stay); 0 keeps every one. Ours: 3.
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 3


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
        if cfg.SOLVER.AMP.ENABLED:  # (its AMPTrainer asserts a GPU: a traceback otherwise)
            cfg.SOLVER.AMP.ENABLED = False
            changes.append("SOLVER.AMP.ENABLED True -> False (detectron2's mixed precision is "
                           "float16 on CUDA only; the CPU trains in float32)")
    return changes



def check_resumed_config(cfg) -> None:
    """With a checkpoint in OUTPUT_DIR, compare the config of the run that wrote it (its
    config.yaml) with `cfg`: changes outside RESUMABLE_CHANGES are refused, naming each key."""
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not (os.path.isfile(saved) and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))):
        return
    with open(saved) as f:
        allowed, refused = resume_changes(f.read(), cfg, RESUMABLE_CHANGES,
                                          equivalent={"naiveSyncBN": "SyncBN"})  # CPU vs GPU
    if refused:
        raise ConfigError(f"{cfg.OUTPUT_DIR} holds a run with another config, and --resume "
                          f"continues a run, it cannot change it: {describe_changes(refused)}. Use "
                          "that run's config, or a new OUTPUT_DIR for a new run.")
    if allowed:
        logging.getLogger("transfer").warning(
            f"resuming with changed settings: {describe_changes(allowed)}")


def merge_config(config_file: str, opts=()):
    """This project's defaults <- the YAML file (its _BASE_ chain read as plain data) <- KEY VALUE
    pairs; not yet adapted to the machine."""
    cfg = get_cfg()
    check_config_chain(config_file)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"bad config ({config_file} + overrides): {e}") from None
    if cfg.SOLVER.CHECKPOINTS_TO_KEEP < 0:
        raise ConfigError("SOLVER.CHECKPOINTS_TO_KEEP must be 0 (keep all) or more, got "
                          f"{cfg.SOLVER.CHECKPOINTS_TO_KEEP}")
    for key in ("SOLVER.MAX_ITER", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.IMS_PER_BATCH"):
        if get_key(cfg, key) < 1:
            raise ConfigError(f"{key} must be 1 or more, got {get_key(cfg, key)} ({config_file} "
                              "+ overrides)")
    return cfg


def setup(args):
    """Config from file + overrides, adapted to the machine, then detectron2's default_setup
    (output folder, logging, config.yaml, seed)."""
    # imported here: detectron2.engine pulls in its data and evaluation packages (torchvision,
    # about 2 s a process), which the pipeline's planner, reading configs, does not need
    from detectron2.engine import default_setup

    from .data import check_datasets

    cfg = merge_config(args.config_file, args.opts)
    reference, world = cfg.SOLVER.REFERENCE_WORLD_SIZE, comm.get_world_size()
    if reference and reference != world and cfg.SOLVER.IMS_PER_BATCH % reference:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} does not split over the "
            f"SOLVER.REFERENCE_WORLD_SIZE {reference} GPUs of the protocol, from which detectron2 "
            f"rescales batch, learning rate and schedule to your {world}. Give a batch divisible "
            f"by {reference}, or SOLVER.REFERENCE_WORLD_SIZE 0 to train with your batch and "
            "schedule as given (docs/transfer.md).")
    if cfg.DATALOADER.BAD_IMAGES not in ("skip", "error"):
        raise ConfigError(f"DATALOADER.BAD_IMAGES = {cfg.DATALOADER.BAD_IMAGES!r} is not one of "
                          "skip, error")
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ConfigError(f"MODEL.WEIGHTS {weights} does not exist. Convert a pretraining "
                          "checkpoint with tools/convert_to_d2.py, or pass MODEL.WEIGHTS '' to "
                          "start from random weights.")
    check_datasets([*(() if args.eval_only else cfg.DATASETS.TRAIN), *cfg.DATASETS.TEST])
    changes = adapt_to_machine(cfg)
    cfg.freeze()
    if comm.is_main_process():  # one run per folder: a second one stops before it writes
        claim_output_dir(cfg.OUTPUT_DIR)
        if args.resume:
            check_resumed_config(cfg)  # before default_setup writes the new config.yaml
    default_setup(cfg, args)
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="transfer")
    for change in changes:
        logger.warning(f"adapted to this machine: {change}")
    return cfg
