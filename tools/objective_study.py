#!/usr/bin/env python
"""Compare pretraining configs on one budget: pretrain each, then kNN and linear-probe top-1
of its encoder (and of a random encoder), as a Markdown table and JSON.

    python tools/objective_study.py --out output/study --epochs 2 --batch-size 128 \
        --train-root ../shared/data/cifar10-small/train --val-root ../shared/data/cifar10-small/test \
        configs/pretrain/simclr_r18_cifar.yaml configs/pretrain/infocl_rc_simclr_r18_cifar.yaml ...

Every run gets the same data, epochs, batch size and seed. Re-running continues unfinished
pretraining runs (--resume) and skips finished evaluations. The linear probe is the one of
tools/linear_eval.py (precomputed features, SGD lr 0.01, last epoch).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import _toolpath  # noqa: F401  (must come before `import pretrain`: see tools/_toolpath.py)
import torch
import torch.nn.functional as F

from pretrain.config import load_config
from pretrain.data import build_eval_loader
from pretrain.eval.features import extract_features, load_encoder
from pretrain.eval.knn import knn_top1
from pretrain.eval.linear import train_linear_probe

TOOLS = Path(__file__).resolve().parent


def _run(cmd, log):
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, *map(str, cmd)], stdout=f, stderr=f)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}; see {log}")


def evaluate(name, config, checkpoint, args, out):
    """kNN and linear-probe top-1 of a checkpoint's encoder (random weights without one), from
    one pass of feature extraction; cached in OUT/NAME.eval.json."""
    result_file = out / f"{name}.eval.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    cfg = load_config(str(config), ["DATA.NUM_WORKERS", str(args.workers)])
    torch.manual_seed(args.seed)
    encoder = load_encoder(cfg, str(checkpoint) if checkpoint else "")
    device = torch.device("cpu")
    train = extract_features(encoder, build_eval_loader(cfg, args.train_root), device,
                             normalize=False)
    test = extract_features(encoder, build_eval_loader(cfg, args.val_root), device,
                            normalize=False)
    unit = [(F.normalize(f, dim=1), y) for f, y in (train, test)]
    result = {"knn_top1": knn_top1(*unit[0], *unit[1], k=cfg.KNN.K,
                                   temperature=cfg.KNN.TEMPERATURE),
              "linear_top1": train_linear_probe(*train, *test, epochs=args.linear_epochs,
                                                seed=args.seed)[0]}
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
        rows[name] = evaluate(name, run_dir / "config.yaml", run_dir / "model_final.pth", args,
                              args.out)
        print(f"[study] {name}: {rows[name]}", flush=True)
    rows["random init"] = evaluate("random_init", first_config, None, args, args.out)

    table = ["| run | kNN top-1 (%) | linear top-1 (%) |", "|---|---|---|"]
    table += [f"| {name} | {r['knn_top1']:.2f} | {r['linear_top1']:.2f} |"
              for name, r in rows.items()]
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
