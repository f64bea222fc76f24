#!/usr/bin/env python
"""Self-supervised pretraining of a ResNet encoder (stage one), in one process.

    python tools/pretrain_net.py --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
        DATA.ROOT path/to/train DATA.VAL_ROOT path/to/test OUTPUT_DIR output/simclr
    python tools/pretrain_net.py --config-file ... --resume      # continue the run in OUTPUT_DIR

The same as `python -m pretrain` (pretrain/cli.py). Several processes or machines: tools/pretrain.sh
(torchrun), or srun under SLURM (docs/pretrain.md). Writes OUTPUT_DIR/{config.yaml, metrics.json,
events.out.tfevents.*, log.txt, model_NNNNNNN.pth, last_checkpoint, model_final.pth}.
"""

import sys

from pretrain.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
