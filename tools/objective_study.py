#!/usr/bin/env python
"""Compare pretraining configs on one budget, over seeds: pretrain each, then kNN and
linear-probe top-1 of its frozen encoder (and of a random encoder), mean ± std per config with
each config's paired difference to the first; `--estimate SECONDS` says how many epochs fit.
The same as `python -m pipeline.study` (its --help has the options and examples)."""

import sys
from pathlib import Path

# Python puts this script's folder first on the path, where tools/pipeline.py would stand for
# the package of that name
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.study import main

if __name__ == "__main__":
    sys.exit(main())
