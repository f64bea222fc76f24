"""What the offline evaluation tools (tools/knn_eval.py, tools/linear_eval.py) share: their
arguments, and frozen features of a checkpoint's encoder on the train and test folders."""

import argparse
import os

import torch

from ..config import ConfigError, load_config
from ..data import build_eval_loader
from ..engine.run import resolve_device
from .features import extract_features, load_encoder


def build_parser(description):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a pretraining checkpoint (model_*.pth)")
    which.add_argument("--random-init", action="store_true",
                       help="evaluate a randomly initialised encoder (the baseline)")
    parser.add_argument("--config-file", default="",
                        help="the run's config (default: config.yaml beside the checkpoint)")
    parser.add_argument("--ema", action="store_true",
                        help="use the momentum (EMA) encoder of BYOL / MoCo checkpoints")
    parser.add_argument("--train-root", help="labelled training folder (default: DATA.ROOT)")
    parser.add_argument("--val-root", help="labelled test folder (default: DATA.VAL_ROOT)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides (e.g. DATA.NUM_WORKERS 2)")
    return parser


def evaluation_features(args, normalize=True):
    """(cfg, (train features, labels), (test features, labels)) for the parsed arguments."""
    config = args.config_file
    if not config and args.checkpoint:
        config = os.path.join(os.path.dirname(args.checkpoint), "config.yaml")
        if not os.path.isfile(config):
            raise ConfigError(f"no config.yaml beside {args.checkpoint}; pass --config-file")
    cfg = load_config(config, args.opts)
    train_root = args.train_root or cfg.DATA.ROOT
    val_root = args.val_root or cfg.DATA.VAL_ROOT
    if not (train_root and val_root):
        raise ConfigError("both a training and a test folder are needed: --train-root/--val-root "
                          "or DATA.ROOT/DATA.VAL_ROOT")
    torch.manual_seed(cfg.SEED)
    device = resolve_device(cfg)
    encoder = load_encoder(cfg, args.checkpoint or "", args.ema).to(device)
    train = extract_features(encoder, build_eval_loader(cfg, train_root), device,
                             normalize=normalize)
    test = extract_features(encoder, build_eval_loader(cfg, val_root), device,
                            normalize=normalize)
    return cfg, train, test
