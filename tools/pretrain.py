#!/usr/bin/env python
"""Self-supervised pretraining of a ResNet encoder (stage one).

    python tools/pretrain.py --config-file configs/pretrain/simclr_r18_cifar.yaml \
        DATA.ROOT path/to/train DATA.VAL_ROOT path/to/test OUTPUT_DIR output/simclr
    python tools/pretrain.py --config-file ... --resume      # continue the run in OUTPUT_DIR

Multi-process and multi-node runs go through tools/pretrain.sh (torchrun) or srun (SLURM).
Writes OUTPUT_DIR/{config.yaml, metrics.json, events.out.tfevents.*, log.txt,
model_NNNNNNN.pth, last_checkpoint, model_final.pth}.
"""

import argparse
import sys

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
from pretrain.config import ConfigError, load_config
from pretrain.data import DatasetError, user_message
from pretrain.engine.checkpoint import CheckpointError
from pretrain.engine.run import run_pretraining
from pretrain.engine.trainer import DistributedFaultError, NonFiniteLossError


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint if there is one")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.BATCH_SIZE 128")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        trainer = run_pretraining(cfg, resume=args.resume)
    except (ConfigError, DatasetError, CheckpointError, NonFiniteLossError,
            DistributedFaultError) as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    print(f"done: {trainer.max_iter} iterations; outputs in {cfg.OUTPUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
