#!/usr/bin/env python
"""Linear-probe top-1 of a pretraining checkpoint's frozen encoder (or of a random one).

Features are computed once (centre crop), standardised, and a linear classifier is trained on
them with SGD + cosine schedule; the last epoch's top-1 is reported (see pretrain/eval/linear.py).

    python tools/linear_eval.py --checkpoint output/simclr/model_final.pth --epochs 100 --lr 0.01
"""

import sys

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
from tqdm import tqdm

from pretrain.config import ConfigError
from pretrain.data import DatasetError, user_message
from pretrain.engine.checkpoint import CheckpointError
from pretrain.eval.cli import build_parser, evaluation_features
from pretrain.eval.linear import train_linear_probe


def main(argv=None):
    parser = build_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.01, help="SGD lr (InfoCL CIFAR: 0.01)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        cfg, train, test = evaluation_features(args, normalize=False)
    except (ConfigError, CheckpointError, DatasetError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    with tqdm(total=args.epochs, desc="linear probe", unit="epoch") as bar:
        top1, _ = train_linear_probe(
            *train, *test, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
            weight_decay=args.weight_decay, seed=cfg.SEED,
            progress=lambda epoch, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    print(f"linear top-1: {top1:.2f}%  ({args.checkpoint or 'random init'}, {args.epochs} epochs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
