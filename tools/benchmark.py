#!/usr/bin/env python
"""Throughput of this project against a reference implementation, measured in one run: the
training steps of both stages, the loader alone, the start-up on 1.28M files. The same as
`python -m transfer.benchmark`; its options: `python tools/benchmark.py --help`, the numbers:
docs/performance.md."""

import sys

from transfer.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
