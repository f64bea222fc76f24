#!/usr/bin/env python
"""Weighted kNN top-1 of a pretraining checkpoint's frozen encoder (or of a random one).

    python tools/knn_eval.py --checkpoint output/simclr/model_final.pth
    python tools/knn_eval.py --random-init --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
        DATA.ROOT data/train DATA.VAL_ROOT data/test

The same as `python -m pretrain.eval knn` (pretrain/eval/cli.py).
"""

import sys

from pretrain.eval.cli import knn_main

if __name__ == "__main__":
    sys.exit(knn_main(description=__doc__))
