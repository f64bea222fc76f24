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
from ssl2det.distributed import get_rank, init_distributed
from ssl2det.errors import ConfigError, one_line_errors
from ssl2det.io import atomic_write

from ..config import load_config
from ..data import build_eval_loader, image_folder
from .features import extract_features, load_encoder
from .image_probe import train_probe_on_images
from .knn import knn_top1
from .linear import train_linear_probe
from .protocols import PROTOCOLS


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
    parser.add_argument("--protocol", choices=sorted({*PROTOCOLS, "kornblith"}),
                        help="default: the config's PROBE.PROTOCOL. ours: standardised features, "
                             "batch 256, cosine, last epoch; infocl: InfoCL's eval_lr.py (raw "
                             "features, batch 128, steps at 60/80); infocl_imagenet: its "
                             "eval_lr_imagenet.py (trained on augmented images, SGD 0.3, cosine "
                             "per epoch, batch 256). Best epoch reported beside the last. See "
                             "pretrain/eval/linear.py")
    parser.add_argument("--epochs", type=int, default=100, help="linear-probe epochs")
    parser.add_argument("--lr", type=float, help="SGD lr (default: the protocol's)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="infocl_imagenet: where its state is kept after every epoch and "
                             "resumed from (default: the --output file's folder; none for "
                             "`linear`)")
    parser.add_argument("--batch-size", type=int, help="default: the protocol's")
    parser.add_argument("--weight-decay", type=float, default=0.0)


class Evaluation:
    """What the parsed arguments evaluate: the config, the frozen encoder on its device, the
    labelled training and test folders."""

    def __init__(self, args):
        config = args.config_file
        if not config and args.checkpoint:
            config = os.path.join(os.path.dirname(args.checkpoint), "config.yaml")
            if not os.path.isfile(config):
                raise ConfigError(f"no config.yaml beside {args.checkpoint}; pass --config-file")
        # The run's config names the run's folder as OUTPUT_DIR: an evaluation writes no file
        # index there unless asked to (DATA.FILE_INDEX True, and DATA.INDEX_DIR for where)
        cfg = self.cfg = load_config(config, ["DATA.FILE_INDEX", "False", *args.opts])
        # the labelled folder: DATA.ROOT may be unlabelled (STL-10's), KNN.TRAIN_ROOT names the
        # labelled one where it differs
        self.train_root = args.train_root or cfg.KNN.TRAIN_ROOT or cfg.DATA.ROOT
        self.val_root = args.val_root or cfg.DATA.VAL_ROOT
        if not (self.train_root and self.val_root):
            raise ConfigError("both a training and a test folder are needed: --train-root/"
                              "--val-root, or KNN.TRAIN_ROOT (or DATA.ROOT) and DATA.VAL_ROOT")
        classes = image_folder(cfg, self.train_root).classes
        if len(classes) < 2:
            raise ConfigError(f"the probe's training folder {self.train_root} has "
                              f"{len(classes)} class ({', '.join(classes)}): a linear probe "
                              "needs labelled classes; give --train-root the labelled folder "
                              "(ROOT/<class>/<image>.jpg), or set KNN.TRAIN_ROOT")
        self.protocol = getattr(args, "protocol", None) or cfg.PROBE.PROTOCOL
        device = resolve_device(cfg.MODEL.DEVICE)
        if PROTOCOLS[self.protocol].on_images:  # several processes split its batches
            _, _, local = init_distributed(device.type, cfg.DIST.TIMEOUT_S, cfg.DIST.SOCKET_IFNAME)
            device = torch.device("cuda", local) if device.type == "cuda" else device
        torch.manual_seed(cfg.SEED)
        self.device = device
        self.encoder = load_encoder(cfg, args.checkpoint or "", args.ema).to(device)

    def features(self, normalize=True):
        """((train features, labels), (test features, labels)) computed once."""
        return tuple(extract_features(self.encoder, build_eval_loader(self.cfg, root),
                                      self.device, normalize=normalize)
                     for root in (self.train_root, self.val_root))

    def linear_probe(self, args, features=None):
        """The protocol's probe: on features computed once, or on augmented images."""
        with tqdm(total=args.epochs, desc="linear probe", unit="epoch") as bar:
            def progress(epoch, loss):
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            if PROTOCOLS[self.protocol].on_images:
                output = getattr(args, "output", None)
                state_dir = args.state_dir or (os.path.dirname(os.path.abspath(output))
                                               if output else "")
                return train_probe_on_images(
                    self.cfg, self.encoder, self.train_root, self.val_root, state_dir,
                    self.device, args.epochs, args.lr, args.batch_size, progress)
            train, test = features or self.features(normalize=False)
            return train_linear_probe(*train, *test, epochs=args.epochs, lr=args.lr,
                                      weight_decay=args.weight_decay, protocol=self.protocol,
                                      batch_size=args.batch_size, seed=self.cfg.SEED,
                                      progress=progress)


def _linear_line(result, args, protocol) -> str:
    return (f"linear top-1: {result.last:.2f}% after the last of {args.epochs} epochs, best "
            f"{result.best:.2f}% at epoch {result.best_epoch} ({protocol} protocol)")


def _knn(cfg, train, test, args):
    return knn_top1(*train, *test, k=args.k or cfg.KNN.K,
                    temperature=args.temperature or cfg.KNN.TEMPERATURE)


@one_line_errors
def knn_main(argv=None, description=__doc__):
    parser = build_parser(description)
    parser.add_argument("--k", type=int, help="neighbours (default: KNN.K)")
    parser.add_argument("--temperature", type=float, help="vote temperature (KNN.TEMPERATURE)")
    args = parser.parse_args(argv)
    evaluation = Evaluation(args)
    train, test = evaluation.features()
    print(f"kNN top-1: {_knn(evaluation.cfg, train, test, args):.2f}%  "
          f"({args.checkpoint or 'random init'}, {len(train[1])} train, {len(test[1])} test images)")
    return 0


def _add_downstream_arguments(parser):
    from .downstream import PROTOCOLS as DOWNSTREAM
    from .sets import describe_sets

    parser.add_argument("--dataset", metavar="NAME",
                        help="a downstream set read in its official layout from --data-root "
                             "(listed below) instead of image folders; --protocol then is one "
                             f"of {', '.join(DOWNSTREAM)} (pretrain/eval/downstream.py)")
    parser.add_argument("--data-root", metavar="DIR", help="where --dataset's files are")
    parser.add_argument("--classes", type=int, default=0,
                        help="--dataset: the classes this copy has, where a subset is meant "
                             "(default: the release's; another count is refused)")
    parser.add_argument("--size", type=int, default=0,
                        help="--dataset: the image size (default: the protocol's)")
    parser.add_argument("--seed", type=int, default=0, help="--dataset: the probe's seed")
    parser.add_argument("--repeats", type=int, default=1,
                        help="--dataset: seeds SEED..SEED+N-1 over one extraction of the "
                             "features (their results under 'repeats' in the JSON)")
    parser.add_argument("--output", metavar="JSON", help="--dataset: write the result here")
    parser.add_argument("--feature-dir", metavar="DIR",
                        help="--dataset: where the features are kept and found again "
                             "(default: features/ beside --output)")
    parser.epilog = "downstream sets (--dataset NAME --data-root DIR):\n" + describe_sets()


def downstream_main(args) -> int:
    """--dataset: the frozen encoder on a downstream set (pretrain/eval/downstream.py)."""
    from .downstream import PROTOCOLS as DOWNSTREAM
    from .downstream import evaluate

    if not args.data_root:
        raise ConfigError(f"--dataset {args.dataset} needs --data-root, the folder of its files")
    protocol = args.protocol or "infocl"
    if protocol not in DOWNSTREAM:
        raise ConfigError(f"--dataset takes --protocol {' or '.join(DOWNSTREAM)}, not "
                          f"{protocol!r}")
    config = args.config_file or (os.path.join(os.path.dirname(args.checkpoint), "config.yaml")
                                  if args.checkpoint else "")
    if args.checkpoint and not os.path.isfile(config):
        raise ConfigError(f"no config.yaml beside {args.checkpoint}; pass --config-file")
    cfg = load_config(config, ["DATA.FILE_INDEX", "False", *args.opts])
    device = resolve_device(cfg.MODEL.DEVICE)
    torch.manual_seed(cfg.SEED)
    encoder = load_encoder(cfg, args.checkpoint or "", args.ema).to(device)
    if args.checkpoint:
        stat = os.stat(args.checkpoint)
        key = {"checkpoint": os.path.abspath(args.checkpoint), "bytes": stat.st_size,
               "mtime_ns": stat.st_mtime_ns, "ema": args.ema}
    else:
        key = {"random_init": config, "seed": cfg.SEED, "arch": cfg.MODEL.ARCH}
    folder = args.feature_dir or os.path.join(
        os.path.dirname(os.path.abspath(args.output)) if args.output else os.getcwd(), "features")
    runs = []
    with tqdm(desc=f"{args.dataset} ({protocol})", unit="step") as bar:
        # (kornblith's fit is deterministic: one serves every seed)
        repeats = max(1, args.repeats) if protocol == "infocl" else 1
        for seed in range(args.seed, args.seed + repeats):
            runs.append(evaluate(encoder, cfg, args.dataset, args.data_root, protocol, folder,
                                 device, seed, args.classes, args.size, key,
                                 progress=lambda step, value: bar.update(1)))
    result = {**runs[0], "repeats": runs} if len(runs) > 1 else runs[0]
    if args.output:
        text = json.dumps(result, indent=1)
        atomic_write(args.output, lambda f: f.write(text.encode()))
    best = (f", best {result['top1_best']:.2f}% at epoch {result['best_epoch']} (chosen on the "
            "test set, as InfoCL reports)") if result["top1_best"] is not None else ""
    print(f"{args.dataset}: {result['metric']} {result['metric_value']:.2f}% on "
          f"{result['n_test']} test images ({protocol} protocol{best}"
          + (f"; L2 {result['l2']:.3g}" if "l2" in result else "") + ")"
          + (f"; saved to {args.output}" if args.output else ""))
    return 0


@one_line_errors
def linear_main(argv=None, description=__doc__):
    parser = build_parser(description)
    _add_linear_arguments(parser)
    _add_downstream_arguments(parser)
    args = parser.parse_args(argv)
    if args.dataset:
        return downstream_main(args)
    evaluation = Evaluation(args)
    result = evaluation.linear_probe(args)
    print(f"{_linear_line(result, args, evaluation.protocol)}; "
          f"{args.checkpoint or 'random init'}")
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
    evaluation = Evaluation(args)
    train, test = evaluation.features(normalize=False)
    unit = [(F.normalize(f, dim=1), y) for f, y in (train, test)]
    linear = evaluation.linear_probe(args, (train, test))
    result = {"knn_top1": _knn(evaluation.cfg, *unit, args), "linear_top1": linear.last,
              "linear_top1_best": linear.best, "linear_best_epoch": linear.best_epoch,
              "linear_protocol": evaluation.protocol, "linear_epochs": args.epochs,
              "train_images": len(train[1]), "test_images": len(test[1])}
    if get_rank() == 0:
        text = json.dumps(result, indent=1)
        atomic_write(args.output, lambda f: f.write(text.encode()))
    print(f"kNN top-1: {result['knn_top1']:.2f}%; "
          f"{_linear_line(linear, args, evaluation.protocol)}; "
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
