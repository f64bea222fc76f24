#!/usr/bin/env python
"""Compare pretraining configs on one budget: pretrain each, then kNN and linear-probe top-1
of its frozen encoder (and of a random encoder), as a Markdown table and JSON.

    python tools/objective_study.py --out output/study --epochs 2 --batch-size 128 \
        --train-root ../shared/data/cifar10-small/train --val-root ../shared/data/cifar10-small/test \
        configs/pretrain/infocl_cifar10_simclr.yaml configs/pretrain/infocl_cifar10_simclr_rc.yaml ...

A pipeline (transfer/pipeline.py) of pretraining and probe stages: every run gets the same data,
epochs, batch size and seed; re-running continues unfinished runs and skips finished ones. The
probe is the one of `python -m pretrain.eval probe` (precomputed features, SGD lr 0.01; the last
and the best epoch). Writes OUT/study.yaml (the run file), OUT/results.{md,json} and
OUT/report.{md,html}.
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

from ssl2det.errors import one_line_errors
from transfer.pipeline import load_spec, run_pipeline
from transfer.report import probe_table


def study_run_file(args) -> dict:
    common = ["DATA.ROOT", args.train_root, "DATA.VAL_ROOT", "", "SOLVER.EPOCHS", args.epochs,
              "SOLVER.BATCH_SIZE", args.batch_size, "SEED", args.seed,
              "DATA.NUM_WORKERS", args.workers]
    return {"output_dir": str(args.out),
            "pretrain": [{"name": Path(c).stem, "config": str(Path(c).resolve()),
                          "overrides": common} for c in args.configs],
            "probe": {"train_root": args.train_root, "val_root": args.val_root,
                      "linear_epochs": args.linear_epochs, "baseline": True,
                      "linear_protocol": args.linear_protocol,
                      "overrides": ["DATA.NUM_WORKERS", args.workers]}}


@one_line_errors
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="pretraining configs to compare")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-root", required=True)
    parser.add_argument("--val-root", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--linear-protocol", choices=("ours", "infocl"), default="ours",
                        help="the linear probe's protocol (pretrain/eval/linear.py)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_file = args.out / "study.yaml"
    run_file.write_text(yaml.safe_dump(study_run_file(args), sort_keys=False))
    spec = load_spec(str(run_file))
    run_pipeline(spec)
    headers, rows = probe_table(spec)
    table = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {name: json.loads(spec.layout.probe_result(name).read_text())
         for name, *_ in rows}, indent=1))
    print(f"[study] table: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
