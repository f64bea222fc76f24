#!/usr/bin/env python
"""Linear-probe top-1 of a pretraining checkpoint's frozen encoder (or of a random one).

Features are computed once (centre crop), standardised, and a linear classifier is trained on
them with SGD + cosine schedule; the last epoch's top-1 is reported (see pretrain/eval/linear.py).

    python tools/linear_eval.py --checkpoint output/simclr/model_final.pth --epochs 100 --lr 0.01

The same as `python -m pretrain.eval linear` (pretrain/eval/cli.py).
"""

import sys

from pretrain.eval.cli import linear_main

if __name__ == "__main__":
    sys.exit(linear_main(description=__doc__))
