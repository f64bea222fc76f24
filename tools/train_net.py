#!/usr/bin/env python
"""Fine-tune and evaluate detectron2 models from self-supervised backbones (stage two): the
command line of `python -m transfer.train_net` (transfer/train_net.py; `--help` shows examples)."""

import sys

from transfer.train_net import main

if __name__ == "__main__":
    sys.exit(main())
