"""The evaluation entry points: kNN, linear probe, or both from one feature extraction (the
pipeline's probe stage), on a pretraining checkpoint's frozen encoder or a random one.

    python -m pretrain.eval knn --checkpoint output/simclr/model_final.pth
    python -m pretrain.eval linear --checkpoint ... --epochs 100 --lr 0.01
    python -m pretrain.eval probe --checkpoint ... --output probe.json   # both, as JSON

(tools/knn_eval.py and tools/linear_eval.py are the first two.)
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssl2det.device import resolve_device
from ssl2det.errors import ConfigError, one_line_errors
from ssl2det.io import atomic_write

from ..config import load_config
from ..data import build_eval_loader
from .features import extract_features, load_encoder
from .knn import knn_top1
from .linear import PROTOCOLS, train_linear_probe


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


def _add_linear_arguments(parser):
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="ours",
                        help="ours: standardised features, batch 256, cosine, last epoch; infocl: "
                             "InfoCL's eval_lr.py (raw features, batch 128, steps at 60/80, best "
                             "epoch reported beside the last). See pretrain/eval/linear.py")
    parser.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD lr (InfoCL: 0.01)")
    parser.add_argument("--batch-size", type=int, help="default: the protocol's")
    parser.add_argument("--weight-decay", type=float, default=0.0)


def evaluation_features(args, normalize=True):
    """(cfg, (train features, labels), (test features, labels)) for the parsed arguments."""
    config = args.config_file
    if not config and args.checkpoint:
        config = os.path.join(os.path.dirname(args.checkpoint), "config.yaml")
        if not os.path.isfile(config):
            raise ConfigError(f"no config.yaml beside {args.checkpoint}; pass --config-file")
    # The run's config names the run's folder as OUTPUT_DIR: an evaluation writes no file index
    # there unless asked to (DATA.FILE_INDEX True, and DATA.INDEX_DIR for where)
    cfg = load_config(config, ["DATA.FILE_INDEX", "False", *args.opts])
    train_root = args.train_root or cfg.DATA.ROOT
    val_root = args.val_root or cfg.DATA.VAL_ROOT
    if not (train_root and val_root):
        raise ConfigError("both a training and a test folder are needed: --train-root/--val-root "
                          "or DATA.ROOT/DATA.VAL_ROOT")
    torch.manual_seed(cfg.SEED)
    device = resolve_device(cfg.MODEL.DEVICE)
    encoder = load_encoder(cfg, args.checkpoint or "", args.ema).to(device)
    train = extract_features(encoder, build_eval_loader(cfg, train_root), device,
                             normalize=normalize)
    test = extract_features(encoder, build_eval_loader(cfg, val_root), device,
                            normalize=normalize)
    return cfg, train, test


def _linear_probe(cfg, train, test, args):
    with tqdm(total=args.epochs, desc="linear probe", unit="epoch") as bar:
        return train_linear_probe(
            *train, *test, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
            protocol=args.protocol, batch_size=args.batch_size, seed=cfg.SEED,
            progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))


def _linear_line(result, args) -> str:
    return (f"linear top-1: {result.last:.2f}% after the last of {args.epochs} epochs, best "
            f"{result.best:.2f}% at epoch {result.best_epoch} ({args.protocol} protocol)")


def _knn(cfg, train, test, args):
    return knn_top1(*train, *test, k=args.k or cfg.KNN.K,
                    temperature=args.temperature or cfg.KNN.TEMPERATURE)


@one_line_errors
def knn_main(argv=None, description=__doc__):
    parser = build_parser(description)
    parser.add_argument("--k", type=int, help="neighbours (default: KNN.K)")
    parser.add_argument("--temperature", type=float, help="vote temperature (KNN.TEMPERATURE)")
    args = parser.parse_args(argv)
    cfg, train, test = evaluation_features(args)
    print(f"kNN top-1: {_knn(cfg, train, test, args):.2f}%  "
          f"({args.checkpoint or 'random init'}, {len(train[1])} train, {len(test[1])} test images)")
    return 0


@one_line_errors
def linear_main(argv=None, description=__doc__):
    parser = build_parser(description)
    _add_linear_arguments(parser)
    args = parser.parse_args(argv)
    cfg, train, test = evaluation_features(args, normalize=False)
    result = _linear_probe(cfg, train, test, args)
    print(f"{_linear_line(result, args)}; {args.checkpoint or 'random init'}")
    return 0


@one_line_errors
def probe_main(argv=None, description=__doc__):
    """kNN (on L2-normalised features) and linear probe (raw features) from one extraction."""
    parser = build_parser(description)
    _add_linear_arguments(parser)
    parser.add_argument("--output", required=True, metavar="JSON",
                        help="write {knn_top1, linear_top1, ...} here")
    args = parser.parse_args(argv)
    args.k = args.temperature = None
    cfg, train, test = evaluation_features(args, normalize=False)
    unit = [(F.normalize(f, dim=1), y) for f, y in (train, test)]
    linear = _linear_probe(cfg, train, test, args)
    result = {"knn_top1": _knn(cfg, *unit, args), "linear_top1": linear.last,
              "linear_top1_best": linear.best, "linear_best_epoch": linear.best_epoch,
              "linear_protocol": args.protocol, "linear_epochs": args.epochs,
              "train_images": len(train[1]), "test_images": len(test[1])}
    text = json.dumps(result, indent=1)
    atomic_write(args.output, lambda f: f.write(text.encode()))
    print(f"kNN top-1: {result['knn_top1']:.2f}%; {_linear_line(linear, args)}; "
          f"{args.checkpoint or 'random init'}; saved to {args.output}")
    return 0


COMMANDS = {"knn": knn_main, "linear": linear_main, "probe": probe_main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__ + f"\nusage: python -m pretrain.eval {{{','.join(COMMANDS)}}} ...",
              file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
