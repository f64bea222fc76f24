"""Fine-tune and evaluate detectron2 models from self-supervised backbones (stage two): the
entry point behind tools/train_net.py and the pipeline's fine-tune and evaluate stages
(`python -m transfer.train_net ...`).

    python tools/train_net.py --config-file configs/coco_mask_rcnn.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/simclr/r50_d2.pkl
    python tools/train_net.py --config-file configs/voc_faster_rcnn.yaml \
        --register-voc raccoon_train data/raccoon train --register-voc raccoon_test data/raccoon test \
        --voc-classes raccoon DATASETS.TRAIN '("raccoon_train",)' DATASETS.TEST '("raccoon_test",)' \
        MODEL.ROI_HEADS.NUM_CLASSES 1
    python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/run/model_final.pth

detectron2's conventions: --num-gpus, --num-machines, --machine-rank, --dist-url, --resume,
--eval-only, trailing KEY VALUE overrides. Builtin data sets (coco_2017_train, voc_2007_test, ...)
are found under $DETECTRON2_DATASETS. Without a GPU it runs on the CPU (one process). The final
metrics are printed as a table and saved to OUTPUT_DIR/final_metrics.json.
"""

import datetime
import os
import sys

import torch
import torch.distributed as dist
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from tabulate import tabulate

from ssl2det.detectron2_internals import allow_ddp_on_cpus, set_local_process_group
from ssl2det.distributed import choose_interface, forming_group
from ssl2det.placement import placement
from ssl2det.errors import ConfigError, one_line_errors
from ssl2det.process import die_with_parent

from .checkpoint import TransferCheckpointer
from .config import setup
from .data import (VOC_CLASSES, read_semseg_classes, register_builtin_voc_semseg, register_coco,
                   register_semseg, register_voc)
from .metrics import headline, save_final_metrics
from .trainer import Trainer


def register_datasets(args):
    register_builtin_voc_semseg()
    for name, json_file, image_dir in args.register_coco:
        register_coco(name, json_file, image_dir)
    classes = [c.strip() for c in args.voc_classes.split(",") if c.strip()]
    for name, voc_dir, split in args.register_voc:
        register_voc(name, voc_dir, split, classes)
    for name, image_dir, label_dir in args.register_semseg:
        register_semseg(name, image_dir, label_dir, read_semseg_classes(label_dir))


def report(cfg, results):
    print("\nfinal metrics (" + ", ".join(cfg.DATASETS.TEST) + "):")
    print(tabulate(headline(results).items(), headers=["metric", "value"], tablefmt="github",
                   floatfmt=".2f"))
    print(f"saved to {save_final_metrics(cfg, results)}")


def run(args):
    """One process's work (detectron2's `launch` starts one per GPU)."""
    if args.num_gpus * args.num_machines > 1:  # a spawned worker: not without its launcher
        die_with_parent()
    register_datasets(args)
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        TransferCheckpointer(model, save_dir=cfg.OUTPUT_DIR, complete=True).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if args.save_predictions and comm.is_main_process():
            from .visualize import save_predictions

            save_predictions(cfg, model, cfg.DATASETS.TEST[0],
                             os.path.join(cfg.OUTPUT_DIR, "predictions"), args.save_predictions)
    else:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        trainer.train()
        results = trainer.eval_results
    if comm.is_main_process() and results:
        report(cfg, results)
    return results


def build_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.add_argument("--register-coco", nargs=3, action="append", default=[],
                        metavar=("NAME", "JSON", "IMAGE_DIR"),
                        help="register a COCO-format instance data set (repeatable)")
    parser.add_argument("--register-voc", nargs=3, action="append", default=[],
                        metavar=("NAME", "VOC_DIR", "SPLIT"),
                        help="register a PASCAL VOC-layout detection data set (repeatable)")
    parser.add_argument("--voc-classes", default=",".join(VOC_CLASSES),
                        help="comma-separated class names of --register-voc data (default: "
                             "the 20 VOC classes)")
    parser.add_argument("--save-predictions", type=int, default=0, metavar="N",
                        help="with --eval-only: draw the predictions on the first N test images "
                             "into OUTPUT_DIR/predictions/")
    parser.add_argument("--register-semseg", nargs=3, action="append", default=[],
                        metavar=("NAME", "IMAGE_DIR", "LABEL_DIR"),
                        help="register images + label PNGs (LABEL_DIR/classes.json names the "
                             "classes; see tools/coco_to_semseg.py) (repeatable)")
    parser.add_argument("--dist-timeout-s", type=float, default=600, metavar="S",
                        help="seconds a process waits in a collective for the others (a hung "
                             "peer: the others stop after it; default 600, as DIST.TIMEOUT_S)")
    parser.add_argument("--machines-from-env", action="store_true",
                        help="--num-machines, --machine-rank and --dist-url from what a launcher "
                             "of one process per machine set (ssl2det/placement.py: SLURM's "
                             "`srun --ntasks-per-node 1`, or torchrun --nproc-per-node 1, whose "
                             "MASTER_PORT its agent holds: detectron2 meets at the next port)")
    return parser


def parse_args(argv=None):
    """detectron2's arguments; its flags are also recognised after the KEY VALUE pairs."""
    args = build_parser().parse_args(argv)
    for flag in ("--resume", "--eval-only"):
        if flag in args.opts:
            args.opts.remove(flag)
            setattr(args, flag[2:].replace("-", "_"), True)
    return args


@one_line_errors
def main(argv=None):
    args = parse_args(argv)
    if args.machines_from_env:
        where = placement()
        port = where.master_port + (where.launcher == "torchrun")
        args.num_machines, args.machine_rank = where.nodes, where.node_rank
        args.dist_url = f"tcp://{where.master_addr}:{port}"
    if args.num_machines > 1:  # the interface that reaches the first machine, for every worker
        choose_interface(*_master(args), args.machine_rank)
    if args.num_gpus > max(1, torch.cuda.device_count()):
        raise ConfigError(f"--num-gpus {args.num_gpus} but {torch.cuda.device_count()} GPUs are "
                          "visible; without GPUs use --num-gpus 1 (the CPU, one process)")
    timeout = datetime.timedelta(seconds=args.dist_timeout_s)
    if args.num_machines > 1 and not torch.cuda.is_available():
        launch_on_cpus(args, timeout)
    else:
        launch(run, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,),
               timeout=timeout)
    return 0


def _master(args) -> tuple:
    """(host, port) of --dist-url tcp://HOST:PORT."""
    host, _, port = args.dist_url.removeprefix("tcp://").rpartition(":")
    return host, int(port)


def launch_on_cpus(args, timeout):
    """One process per machine on CPUs (gloo): detectron2's `launch` spawns a worker per GPU
    and needs CUDA for more than one process; BN is synchronised by naiveSyncBN there
    (transfer/config.py)."""
    if args.num_gpus != 1:
        raise ConfigError(f"--num-gpus {args.num_gpus} over {args.num_machines} machines without "
                          "GPUs: one process per machine runs there (--num-gpus 1)")
    with forming_group(*_master(args), args.machine_rank, args.dist_timeout_s):
        dist.init_process_group("gloo", init_method=args.dist_url, world_size=args.num_machines,
                                rank=args.machine_rank, timeout=timeout)
    groups = [dist.new_group([machine]) for machine in range(args.num_machines)]
    set_local_process_group(groups[args.machine_rank])
    allow_ddp_on_cpus()
    comm.synchronize()
    run(args)


if __name__ == "__main__":
    sys.exit(main())
