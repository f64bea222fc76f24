#!/usr/bin/env python
"""Weighted kNN top-1 of a pretraining checkpoint's frozen encoder (or of a random one).

    python tools/knn_eval.py --checkpoint output/simclr/model_final.pth
    python tools/knn_eval.py --random-init --config-file configs/pretrain/simclr_r18_cifar.yaml \
        DATA.ROOT data/train DATA.VAL_ROOT data/test
"""

import sys

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
from pretrain.config import ConfigError
from pretrain.engine.checkpoint import CheckpointError
from pretrain.data import DatasetError, user_message
from pretrain.eval.cli import build_parser, evaluation_features
from pretrain.eval.knn import knn_top1


def main(argv=None):
    parser = build_parser(__doc__)
    parser.add_argument("--k", type=int, help="neighbours (default: KNN.K)")
    parser.add_argument("--temperature", type=float, help="vote temperature (KNN.TEMPERATURE)")
    args = parser.parse_args(argv)
    try:
        cfg, train, test = evaluation_features(args)
    except (ConfigError, CheckpointError, DatasetError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    top1 = knn_top1(*train, *test, k=args.k or cfg.KNN.K,
                    temperature=args.temperature or cfg.KNN.TEMPERATURE)
    print(f"kNN top-1: {top1:.2f}%  ({args.checkpoint or 'random init'}, {len(train[1])} train, "
          f"{len(test[1])} test images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
