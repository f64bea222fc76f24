#!/usr/bin/env python
"""Compare pretraining configs on one budget: pretrain each, then kNN and linear-probe top-1
of its encoder (and of a random encoder), as a Markdown table and JSON.

    python tools/objective_study.py --out output/study --epochs 2 --batch-size 128 \
        --train-root ../shared/data/cifar10-small/train --val-root ../shared/data/cifar10-small/test \
        configs/pretrain/simclr_r18_cifar.yaml configs/pretrain/infocl_rc_simclr_r18_cifar.yaml ...

Every run gets the same data, epochs, batch size and seed. Re-running continues unfinished
pretraining runs (--resume) and skips finished evaluations.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parent


def _run(cmd, log):
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, *map(str, cmd)], stdout=subprocess.PIPE,
                              stderr=f, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}; see {log}")
    return proc.stdout


def evaluate(name, checkpoint_args, args, out):
    result_file = out / f"{name}.eval.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    common = [*checkpoint_args, "--train-root", args.train_root, "--val-root", args.val_root,
              "DATA.NUM_WORKERS", str(args.workers)]
    knn = _run([TOOLS / "knn_eval.py", *common], out / f"{name}.log")
    linear = _run([TOOLS / "linear_eval.py", *common[:-2], "--epochs", str(args.linear_epochs),
                   "DATA.NUM_WORKERS", str(args.workers)], out / f"{name}.log")
    result = {"knn_top1": float(re.search(r"kNN top-1: ([\d.]+)", knn).group(1)),
              "linear_top1": float(re.search(r"linear top-1: ([\d.]+)", linear).group(1))}
    result_file.write_text(json.dumps(result))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", help="pretraining configs to compare")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train-root", required=True)
    parser.add_argument("--val-root", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = {}
    first_config = None
    for config in args.configs:
        name = Path(config).stem
        run_dir = args.out / name
        first_config = first_config or run_dir / "config.yaml"
        print(f"[study] pretraining {name} ...", flush=True)
        _run([TOOLS / "pretrain.py", "--config-file", config, "--resume",
              "DATA.ROOT", args.train_root, "DATA.VAL_ROOT", "", "OUTPUT_DIR", run_dir,
              "SOLVER.EPOCHS", str(args.epochs), "SOLVER.BATCH_SIZE", str(args.batch_size),
              "SEED", str(args.seed), "DATA.NUM_WORKERS", str(args.workers)],
             args.out / f"{name}.log")
        rows[name] = evaluate(name, ["--checkpoint", run_dir / "model_final.pth"], args, args.out)
        print(f"[study] {name}: {rows[name]}", flush=True)
    rows["random init"] = evaluate("random_init", ["--random-init", "--config-file",
                                                   first_config], args, args.out)

    table = ["| run | kNN top-1 (%) | linear top-1 (%) |", "|---|---|---|"]
    table += [f"| {name} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} |"
              for name, r in rows.items()]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
