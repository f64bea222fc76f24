"""Self-supervised pretraining of a ResNet encoder (stage one), in this process: what each
process of a multi-process run executes (started by pretrain/launch.py through torchrun, or by
srun under SLURM).

    python -m pretrain --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
        DATA.ROOT path/to/train DATA.VAL_ROOT path/to/test OUTPUT_DIR output/simclr
    python -m pretrain --config-file ... --resume      # continue the run in OUTPUT_DIR

Writes OUTPUT_DIR/{config.yaml, metrics.json, events.out.tfevents.*, log.txt,
model_NNNNNNN.pth, last_checkpoint, model_final.pth}.
"""

import argparse
import os

from ssl2det.errors import one_line_errors
from ssl2det.process import die_with_parent

from .config import load_config, settle_knn_monitor
from .engine.run import run_pretraining


def build_parser(description=__doc__):
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUTPUT_DIR/last_checkpoint if there is one")
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE",
                        help="config overrides, e.g. SOLVER.BATCH_SIZE 128")
    return parser


@one_line_errors
def main(argv=None, description=__doc__):
    args = build_parser(description).parse_intermixed_args(argv)  # --resume may come last
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: not without its agent
        die_with_parent()
    cfg = settle_knn_monitor(load_config(args.config_file, args.opts), given=args.opts[::2])
    trainer = run_pretraining(cfg, resume=args.resume)
    print(f"done: {trainer.max_iter} iterations; outputs in {cfg.OUTPUT_DIR}")
    return 0
