#!/usr/bin/env python
"""Compare pretraining configs on one budget, over seeds: pretrain each, then kNN and
linear-probe top-1 of its frozen encoder (and of a random encoder), mean ± std per config with
each config's paired difference to the first; `--estimate SECONDS` says how many epochs fit.
The same as `python -m transfer.study` (its --help has the options and examples)."""

import sys

from transfer.study import main

if __name__ == "__main__":
    sys.exit(main())
