"""The benchmark's command line: `python -m benchmark TASK ...` (tools/benchmark.py)."""

import argparse
import json
from pathlib import Path

from . import __doc__ as DESCRIPTION
from .allreduce import RESNET50_PARAMETERS, report_allreduce
from .archives import measure_layouts, measure_tar_index, report_layouts, report_tar_index
from .downstream import report_downstream
from .loader import measure_loader, report_loader
from .startup import first_batch_seconds, measure_startup, report_startup, tile_folder
from .steps import DETECTION_SIDES, PRETRAIN_SIDES, measure_one, report, run_sides

def main(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("pretrain", "detection", "loader", "layouts",
                                         "startup", "tar-index", "tile", "allreduce",
                                         "downstream"))
    parser.add_argument("--config-file", metavar="FILE")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations (default 2)")
    parser.add_argument("--iters", type=int, default=6, help="timed iterations (default 6)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating runs per side; the median is reported (default 2)")
    parser.add_argument("--output", metavar="JSON", help="write the results here")
    parser.add_argument("--sides", choices=("both", "ours"), default="both",
                        help="'ours' skips the reference (default: both)")
    parser.add_argument("--profile", metavar="FILE",
                        help="pretrain: write torch.profiler's table of 3 of our steps here")
    parser.add_argument("--images", type=int, default=200,
                        help="loader: timed two-view samples per path and repeat (default 200)")
    parser.add_argument("--files", type=int, default=1_281_167,
                        help="startup, tar-index: files of the synthetic tree or archive "
                        "(default ImageNet's 1,281,167)")
    parser.add_argument("--classes", type=int, default=1000, help="startup: class folders")
    parser.add_argument("--tree", default="/dev/shm/ssl2det-startup-tree",
                        help="startup: where the synthetic tree is made (kept for reruns)")
    parser.add_argument("--source", default=str(Path(__file__).resolve().parents[3] / "shared"
                                               / "data" / "imagenet-sample"),
                        help="startup: a folder with a real JPEG to link to")
    parser.add_argument("--elements", type=int, default=RESNET50_PARAMETERS,
                        help="allreduce: float32 values a step reduces (default ResNet-50's); "
                             "downstream: the features of the L2 sweep (give 10000)")
    parser.add_argument("--threads", type=int, default=2,
                        help="downstream: torch threads of the L2 sweep (default 2)")
    parser.add_argument("--side", help=argparse.SUPPRESS)  # internal: measure one side
    parser.add_argument("--result", help=argparse.SUPPRESS)  # internal: where that side writes
    parser.add_argument("--index-dir", help=argparse.SUPPRESS)  # internal: startup's index
    parser.epilog = ("Trailing KEY VALUE pairs override the config, on both sides. "
                     "tile SOURCE TARGET REPEAT links every image of SOURCE REPEAT times.")
    args, args.opts = parser.parse_known_args(argv)
    unknown = [o for o in args.opts if o.startswith("--")]
    if unknown:
        parser.error(f"unknown option {unknown[0]}")
    if args.task == "tile":
        if len(args.opts) != 3:
            parser.error("tile takes SOURCE TARGET REPEAT")
        print(f"{tile_folder(args.opts[0], args.opts[1], int(args.opts[2]))} files in "
              f"{args.opts[1]}")
        return 0
    if args.task == "allreduce":  # every rank of srun / torchrun runs this
        report_allreduce(args)
        return 0
    if args.task == "downstream":
        report_downstream(args)
        return 0
    if args.task == "tar-index":
        report_tar_index(args, measure_tar_index(args))
        return 0
    if not args.config_file:
        parser.error("--config-file is required")
    if args.side:
        result = first_batch_seconds(args) if args.task == "startup" else measure_one(args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.task in ("loader", "layouts"):
        from pretrain.config import load_config

        cfg = load_config(args.config_file, args.opts)
        if args.task == "loader":
            report_loader(args, cfg, measure_loader(cfg, args.images, args.repeats))
        else:
            report_layouts(args, cfg, measure_layouts(cfg, args.images, args.repeats))
        return 0
    if args.task == "startup":
        report_startup(args, measure_startup(args))
        return 0
    sides = PRETRAIN_SIDES if args.task == "pretrain" else DETECTION_SIDES
    if args.sides == "ours":
        sides = sides[:1]
    report(args, run_sides(args, sides), sides)
    return 0

