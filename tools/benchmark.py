#!/usr/bin/env python
"""Throughput of this project against a reference implementation, measured in one run: the
training steps of both stages, the loader alone, the start-up on 1.28M files. The same as
`python -m benchmark`; its options: `python tools/benchmark.py --help`, the numbers:
docs/performance.md."""

import sys
from pathlib import Path

# Python puts this script's folder first on the path, where this file would stand for the
# package of the same name
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
