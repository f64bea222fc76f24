"""The benchmark's training steps: ours against lightly's SimCLR (pretraining) and against
detectron2's plain DefaultTrainer (stage two), each side in its own process, alternating."""

import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from ssl2det.process import log_tail, run_logged

from .machine import describe_machine, machine

PRETRAIN_SIDES = ("ours", "lightly")


DETECTRON2_UNTIMED = 2  # IterationTimer(warmup_iter=3) records from the third iteration on


DETECTION_SIDES = ("ours", "detectron2")


NO_LIGHTLY = ("error: the reference side needs lightly: `make install-test` (or "
              "`.venv/bin/pip install -r requirements-test.txt`)")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def time_steps(step, device, warmup: int, iters: int):
    """Run `step(i) -> seconds waited for data` warmup + iters times; per timed iteration
    (step seconds, data-wait seconds)."""
    timed = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        wait = step(i)
        _sync(device)
        if i >= warmup:
            timed.append((time.perf_counter() - start, wait))
    return timed


def summarize(full, model_only, batch, device) -> dict:
    step = statistics.median(t for t, _ in full)
    return {"samples_per_s": batch / step, "step_s": step,
            "data_wait_share": sum(w for _, w in full) / sum(t for t, _ in full),
            "model_only_step_s": statistics.median(t for t, _ in model_only),
            "model_only_samples_per_s": batch / statistics.median(t for t, _ in model_only),
            "peak_memory_mb": _peak_memory_mb(device)}


def lightly_transform(cfg):
    """(transform, its name): lightly's two-view transform with the config's values. BYOL's
    asymmetric views where the config has them; lightly has no InfoMin (RandAugment) recipe, so
    an InfoMin config is compared with lightly's SimCLR/MoCo v2 transform, one step short."""
    try:
        from lightly.transforms import (BYOLTransform, BYOLView1Transform, BYOLView2Transform,
                                        SimCLRTransform)
    except ImportError:
        raise SystemExit(NO_LIGHTLY) from None
    i = cfg.INPUT
    b, c, s, h = i.COLOR_JITTER  # lightly: strength * (bright, contrast, sat, hue)
    common = dict(input_size=i.SIZE, cj_prob=i.COLOR_JITTER_PROB, cj_strength=1.0, cj_bright=b,
                  cj_contrast=c, cj_sat=s, cj_hue=h, min_scale=i.CROP_SCALE[0],
                  random_gray_scale=i.GRAYSCALE_PROB,
                  normalize={"mean": list(i.MEAN), "std": list(i.STD)})
    if i.VIEW_BLUR_PROB or i.VIEW_SOLARIZE_PROB:
        (blur0, blur1), (sol0, sol1) = ((i.VIEW_BLUR_PROB or (i.BLUR_PROB,) * 2),
                                        (i.VIEW_SOLARIZE_PROB or (0.0, 0.0)))
        return BYOLTransform(
            BYOLView1Transform(**common, gaussian_blur=blur0, solarization_prob=sol0),
            BYOLView2Transform(**common, gaussian_blur=blur1, solarization_prob=sol1),
        ), "BYOLTransform"
    return SimCLRTransform(**common, gaussian_blur=i.BLUR_PROB), "SimCLRTransform"


def profile_steps(step, device, path, steps=3):
    """torch.profiler's operator table over `steps` training steps, slowest first."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        _sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    Path(path).write_text(f"torch.profiler, {steps} training steps (loader included), {device}\n"
                          + prof.key_averages().table(sort_by=sort, row_limit=40))


def measure_ours(cfg, warmup, iters, profile=None) -> dict:
    from detectron2.utils.events import EventStorage

    from pretrain.engine.run import build_trainer

    trainer = build_trainer(cfg)
    device = trainer.device
    views, _ = trainer._next_batch()
    # random input of the loader's kind (uint8 views when augmenting on the device)
    synthetic = [(torch.randint_like(v, 256) if v.dtype == torch.uint8 else torch.randn_like(v))
                 .to(device) for v in views]

    def step(i):
        trainer.iter = i
        trainer.run_step()
        return trainer.storage.history("data_time").latest()

    with EventStorage() as trainer.storage:
        full = time_steps(step, device, warmup, iters)
        if profile:
            profile_steps(step, device, profile)
        trainer._next_batch = lambda: (synthetic, None)
        model_only = time_steps(step, device, warmup, iters)
    return summarize(full, model_only, cfg.SOLVER.BATCH_SIZE, device)


def measure_lightly(cfg, warmup, iters, profile=None) -> dict:
    """SimCLR as lightly's documentation assembles it: torchvision backbone, SimCLRProjectionHead,
    NTXentLoss, SimCLRTransform, a plain PyTorch loop. The settings come from the same config."""
    import torchvision
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.utils.lars import LARS
    except ImportError:
        raise SystemExit(NO_LIGHTLY) from None

    from pretrain.engine.optim import param_groups, scaled_lr
    from ssl2det.device import resolve_device
    from ssl2det.precision import choose_precision

    if cfg.METHOD.NAME != "simclr" or cfg.OBJECTIVES:
        raise SystemExit("the lightly reference is SimCLR without objectives")
    device = resolve_device(cfg.MODEL.DEVICE)
    torch.manual_seed(cfg.SEED)
    backbone = getattr(torchvision.models, cfg.MODEL.ARCH)()
    if cfg.MODEL.CIFAR_STEM:
        backbone.conv1 = torch.nn.Conv2d(3, 64, 3, cfg.MODEL.STEM_STRIDE, 1, bias=False)
        backbone.maxpool = torch.nn.Identity()
    features = backbone.fc.in_features
    backbone.fc = torch.nn.Identity()
    p = cfg.METHOD.PROJECTOR
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(
        features, p.HIDDEN_DIM, p.OUT_DIM, num_layers=p.NUM_LAYERS, batch_norm=p.BN)).to(device)
    criterion = NTXentLoss(temperature=cfg.METHOD.SIMCLR.TEMPERATURE)
    i = cfg.INPUT
    transform, _ = lightly_transform(cfg)
    dataset = torchvision.datasets.ImageFolder(cfg.DATA.ROOT, transform=transform)
    if len(dataset) < cfg.SOLVER.BATCH_SIZE:  # drop_last would leave no batch at all
        raise SystemExit(f"error: {cfg.DATA.ROOT} has {len(dataset)} images, fewer than one "
                         f"batch of SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE}")
    workers = cfg.DATA.NUM_WORKERS
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.SOLVER.BATCH_SIZE, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    s = cfg.SOLVER
    groups = param_groups(model, s.WEIGHT_DECAY, s.EXCLUDE_BIAS_AND_NORM)
    if s.OPTIMIZER == "lars":
        optimizer = LARS(groups, lr=scaled_lr(cfg), momentum=s.MOMENTUM,
                         weight_decay=s.WEIGHT_DECAY, trust_coefficient=s.LARS_ETA)
    else:
        for g in groups:
            g.pop("lars_exclude", None)
        cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        extra = {"momentum": s.MOMENTUM} if s.OPTIMIZER == "sgd" else {}
        optimizer = cls[s.OPTIMIZER](groups, lr=scaled_lr(cfg), **extra)
    # the precision our side gets on this device (ssl2det.precision), so both compute alike
    precision = choose_precision(device, s.AMP.ENABLED, s.AMP.DTYPE, s.AMP.FORCE)
    batches = iter(loader)
    synthetic = None

    def step(_):
        nonlocal batches
        start = time.perf_counter()
        if synthetic is None:
            try:
                (x0, x1), _ = next(batches)
            except StopIteration:
                batches = iter(loader)
                (x0, x1), _ = next(batches)
            x0, x1 = x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)
        else:
            x0, x1 = synthetic
        wait = time.perf_counter() - start
        with torch.autocast(device.type, dtype=precision.autocast or torch.bfloat16,
                            enabled=precision.autocast is not None):
            loss = criterion(model(x0), model(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return wait

    full = time_steps(step, device, warmup, iters)
    shape = (cfg.SOLVER.BATCH_SIZE, 3, i.SIZE, i.SIZE)
    synthetic = (torch.randn(shape, device=device), torch.randn(shape, device=device))
    model_only = time_steps(step, device, warmup, iters)
    return summarize(full, model_only, cfg.SOLVER.BATCH_SIZE, device)


def pretrain_config(args):
    from pretrain.config import load_config

    total = args.warmup + args.iters + 3  # + the profiled steps
    return load_config(args.config_file, list(args.opts) + [
        "OUTPUT_DIR", args.scratch, "KNN.ENABLED", "False", "SOLVER.MAX_ITER", str(2 * total),
        "SOLVER.CHECKPOINT_PERIOD", str(10**9), "LOG_PERIOD", str(10**9)])


def measure_detection(side, args) -> dict:
    """Iterations/s of training, after warm-up: tools/train_net.py's Trainer or detectron2's
    DefaultTrainer on the same (machine-adapted) config, no evaluation."""
    from detectron2.engine import DefaultTrainer

    from transfer.config import setup
    from transfer.trainer import Trainer

    if args.warmup < DETECTRON2_UNTIMED:
        raise SystemExit(f"error: detection needs --warmup {DETECTRON2_UNTIMED} or more: "
                         "detectron2's IterationTimer times no earlier iteration")

    args.opts = list(args.opts) + [
        "OUTPUT_DIR", args.scratch, "SOLVER.MAX_ITER", str(args.warmup + args.iters),
        "SOLVER.CHECKPOINT_PERIOD", str(10**9), "DATASETS.TEST", "()",
        "TEST.PRECISE_BN.ENABLED", "False", "TEST.EVAL_PERIOD", "0"]
    args.eval_only, args.resume = False, False
    cfg = setup(args)
    trainer = (Trainer if side == "ours" else DefaultTrainer)(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()

    def timed(name):  # (value, iteration) pairs of the iterations after the warm-up
        return [value for value, it in trainer.storage.history(name).values() if it >= args.warmup]

    step = statistics.median(timed("time"))
    device = torch.device(cfg.MODEL.DEVICE)
    return {"iterations_per_s": 1 / step, "step_s": step,
            "data_wait_share": statistics.mean(timed("data_time")) / step,
            "images_per_s": cfg.SOLVER.IMS_PER_BATCH / step, "peak_memory_mb": _peak_memory_mb(device)}


def measure_one(args) -> dict:
    """One side, in this process."""
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = scratch
        if args.task == "detection":
            return measure_detection(args.side, args)
        cfg = pretrain_config(args)
        measure = measure_ours if args.side == "ours" else measure_lightly
        return measure(cfg, args.warmup, args.iters, args.profile)


def run_sides(args, sides):
    """Every side in its own process, alternating, --repeats times; the median per side."""
    runs = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for side in sides:
                log, result = (Path(scratch) / f"{side}{repeat}.{ext}" for ext in ("log", "json"))
                cmd = [sys.executable, "-m", "benchmark", args.task, "--side", side,
                       "--result", result, "--config-file", args.config_file,
                       "--warmup", args.warmup, "--iters", args.iters, *args.opts]
                if args.profile and side == "ours" and repeat == 0:
                    cmd[3:3] = ["--profile", args.profile]
                print(f"measuring {side} ...", file=sys.stderr, flush=True)
                if run_logged(cmd, log) or not result.is_file():
                    raise SystemExit(f"error: measuring {side} failed:\n{log_tail(log, 40)}")
                runs[side].append(json.loads(result.read_text()))
    return {side: {key: statistics.median(r[key] for r in results) for key in results[0]}
            for side, results in runs.items()}


def report(args, results, sides):
    ours, reference = (sides + (None,))[:2]
    first = "samples_per_s" if args.task == "pretrain" else "iterations_per_s"
    keys = list(results[ours])
    rows = [[side] + [results[side][k] for k in keys] for side in sides]
    print(describe_machine())
    print(tabulate(rows, headers=["side"] + keys, tablefmt="github", floatfmt=".4g"))
    ratio, extra = None, {}
    if reference:
        ratio = results[ours][first] / results[reference][first]
        print(f"\nratio ours / {reference} ({first}): {ratio:.3f}")
    if args.task == "pretrain" and reference:
        model_ratio = (results[ours]["model_only_samples_per_s"]
                       / results[reference]["model_only_samples_per_s"])
        print(f"ratio ours / {reference} (model only, synthetic input): {model_ratio:.3f}")
        extra["ratio_model_only"] = model_ratio
    if args.output:
        record = {"task": args.task, "config_file": args.config_file, "overrides": args.opts,
                  "warmup": args.warmup, "iters": args.iters, "repeats": args.repeats,
                  **machine(), "results": results, "ratio": ratio, **extra}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")

