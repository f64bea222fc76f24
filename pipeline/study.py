"""Compare pretraining configs on one budget, over seeds: pretrain each (--seeds times), then kNN
and linear-probe top-1 of its frozen encoder (and of a random encoder), as a Markdown table of
mean ± std per config with each config's paired difference to the first, and JSON.

    python -m pipeline.study --out output/study --epochs 2 --batch-size 128 --seeds 2 \
        --train-root ../shared/data/cifar10-small/train --val-root ../shared/data/cifar10-small/test \
        configs/pretrain/infocl_cifar10_simclr.yaml configs/pretrain/infocl_cifar10_simclr_rc.yaml ...

    # how many epochs x seeds fit in 480 s on this machine: a short warm-up of each config
    python -m pipeline.study --estimate 480 --out output/estimate ... (same arguments)

A pipeline (pipeline/cli.py) of pretraining and probe stages: every run gets the same data,
epochs, batch size and seeds 0..N-1 (seed k of every config is paired); re-running continues
unfinished runs and skips finished ones. With --knn-every E the kNN monitor runs on the test
set every E epochs (the curve is in results.json). The probe is `python -m pretrain.eval probe`
(precomputed features; the last and the best epoch). Writes OUT/study.yaml (the run file),
OUT/results.{md,json} and OUT/report.{md,html}.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import yaml

from ssl2det.errors import UserError, one_line_errors
from ssl2det.process import log_tail, run_logged
from .cli import load_spec, run_pipeline
from .report import probe_table, probe_values, read_metrics


def common_overrides(args) -> list:
    knn = (["DATA.VAL_ROOT", args.val_root, "KNN.PERIOD_EPOCHS", args.knn_every]
           if args.knn_every else ["DATA.VAL_ROOT", ""])
    return ["DATA.ROOT", args.train_root, *knn, "SOLVER.EPOCHS", args.epochs,
            "SOLVER.BATCH_SIZE", args.batch_size, "SEED", args.seed,
            "DATA.NUM_WORKERS", args.workers, *args.opts]


def study_run_file(args) -> dict:
    return {"output_dir": str(args.out),
            "pretrain": [{"name": Path(c).stem, "config": str(Path(c).resolve()),
                          "overrides": common_overrides(args), "repeats": args.seeds}
                         for c in args.configs],
            "probe": {"train_root": args.train_root, "val_root": args.val_root,
                      "linear_epochs": args.linear_epochs, "baseline": True,
                      "linear_protocol": args.linear_protocol,
                      "overrides": ["DATA.NUM_WORKERS", args.workers]}}


def study_results(spec) -> dict:
    """{run: {seed: probe result, with the kNN curve of its pretraining}}."""
    results = {}
    for name in [r.name for r in spec.pretrain] + ["random"]:
        per_seed = probe_values(spec, name)
        run = spec.pretrain_run(name)
        for k, result in per_seed.items():
            if run:
                rows = read_metrics(spec.layout.pretrain(run.replicates()[k]) / "metrics.json")
                result["knn_curve"] = [[r["epoch"], r["knn_top1"]] for r in rows
                                       if "knn_top1" in r and "epoch" in r]
        results[name] = per_seed
    return results


def estimate(args) -> int:
    """The timing model: each config warmed up for --estimate-iters iterations on this machine;
    seconds per epoch from the median step, the fixed cost per run (start, decoding, the
    probe) from the warm-up's wall time, and the epochs that fit --estimate seconds with
    --seeds seeds of every config."""
    from pretrain.data.layouts import layout_of  # (torchvision: only where a study starts)

    images = layout_of(args.train_root).count(args.train_root)
    steps = images // args.batch_size
    rows, fixed = [], []
    for config in args.configs:
        out = args.out / "estimate" / Path(config).stem
        cmd = [sys.executable, "-m", "pretrain", "--config-file", config,
               *map(str, common_overrides(args)), "DATA.VAL_ROOT", "", "OUTPUT_DIR", str(out),
               "SOLVER.MAX_ITER", str(args.estimate_iters), "LOG_PERIOD", "1",
               "SOLVER.CHECKPOINT_PERIOD", str(10**9)]
        out.mkdir(parents=True, exist_ok=True)
        start = time.time()
        code = run_logged(cmd, out / "warmup.log")
        wall = time.time() - start
        if code:
            raise UserError(f"the warm-up of {config} failed (exit {code}); the end of "
                            f"{out / 'warmup.log'}:\n{log_tail(out / 'warmup.log')}")
        times = [r["time"] for r in read_metrics(out / "metrics.json") if "time" in r]
        step = statistics.median(times[len(times) // 2:])  # after compilation and warm-up
        fixed.append(wall - sum(times))
        rows.append({"config": Path(config).stem, "step_s": step, "epoch_s": step * steps})
    per_run_fixed = max(fixed) + args.probe_seconds
    runs = len(args.configs) * args.seeds
    spare = args.estimate - runs * per_run_fixed - args.probe_seconds  # + the random baseline
    epoch_all = sum(r["epoch_s"] for r in rows) * args.seeds
    epochs = max(0, math.floor(spare / epoch_all)) if epoch_all > 0 else 0
    report = {"budget_s": args.estimate, "train_images": images, "batch_size": args.batch_size,
              "steps_per_epoch": steps, "seeds": args.seeds, "configs": rows,
              "fixed_s_per_run": per_run_fixed, "epochs_that_fit": epochs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "estimate.json").write_text(json.dumps(report, indent=1))
    for r in rows:
        print(f"[estimate] {r['config']}: {r['step_s'] * 1000:.0f} ms/step, "
              f"{r['epoch_s']:.1f} s/epoch ({steps} steps of {args.batch_size})")
    print(f"[estimate] fixed cost per run about {per_run_fixed:.0f} s; {runs} runs + the "
          f"random baseline in {args.estimate:.0f} s: {epochs} epochs each")
    print(epochs)  # the last line: for scripts
    return 0


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
    parser.add_argument("--seeds", type=int, default=1,
                        help="pretraining runs per config, seeds 0..N-1 (paired across configs)")
    parser.add_argument("--knn-every", type=int, default=0, metavar="E",
                        help="run the kNN monitor on --val-root every E epochs (0: only the probe)")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--linear-protocol", choices=("ours", "infocl"), default="ours",
                        help="the linear probe's protocol (pretrain/eval/linear.py)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the seed of replicate 0")
    parser.add_argument("--estimate", type=float, metavar="SECONDS",
                        help="only the timing model: how many epochs fit in SECONDS")
    parser.add_argument("--estimate-iters", type=int, default=30,
                        help="warm-up iterations per config for --estimate")
    parser.add_argument("--probe-seconds", type=float, default=30,
                        help="--estimate: the time one probe takes (feature extraction + the "
                             "linear probe), added per run")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a config override for every run (repeatable), e.g. --set "
                             "DATA.DECODE_ONCE True")
    args = parser.parse_args(argv)
    args.opts = [item for pair in args.set for item in pair]
    if args.estimate:
        return estimate(args)
    args.out.mkdir(parents=True, exist_ok=True)
    run_file = args.out / "study.yaml"
    run_file.write_text(yaml.safe_dump(study_run_file(args), sort_keys=False))
    spec = load_spec(str(run_file))
    run_pipeline(spec)
    headers, rows = probe_table(spec)
    table = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    (args.out / "results.md").write_text("\n".join(table) + "\n")
    (args.out / "results.json").write_text(json.dumps(study_results(spec), indent=1))
    print(f"[study] table: {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
