#!/usr/bin/env python
"""Throughput of this project against a reference implementation, measured in one run.

    # pretraining: ours vs the same SimCLR built from lightly's parts (same torchvision ResNet,
    # NT-Xent, SimCLR augmentation, optimiser, batch, workers, AMP)
    python tools/benchmark.py pretrain --config-file configs/pretrain/infocl_cifar10_simclr.yaml \
        DATA.ROOT ../shared/data/cifar10-small/train SOLVER.BATCH_SIZE 128 DATA.NUM_WORKERS 2
    # stage two: tools/train_net.py's trainer vs detectron2's plain DefaultTrainer, same config
    DETECTRON2_DATASETS=../shared/data/detectron2 python tools/benchmark.py detection \
        --config-file configs/cpu/coco_mask_rcnn_fpn_cpu.yaml

Each side runs in its own process (clean peak memory, no shared thread pools), the sides
alternate --repeats times and the median is reported. Per side: two-view samples/s of the full
training step (loader included), the share of step time spent waiting for data, the step time
of the model alone on synthetic input, and peak memory (GPU: max allocated; CPU: peak RSS of
the main process). The first --warmup iterations are not timed. Prints a table and the ratio
ours / reference; --output writes the numbers as JSON. `--sides ours` measures ours alone (e.g.
MODEL.COMPILE on against a run with it off); `--profile FILE` writes torch.profiler's table of
our training step (the slowest operators first) to FILE.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from ssl2det.process import log_tail, run_logged

PRETRAIN_SIDES = ("ours", "lightly")
DETECTRON2_UNTIMED = 2  # IterationTimer(warmup_iter=3) records from the third iteration on
DETECTION_SIDES = ("ours", "detectron2")


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


# --- pretraining ------------------------------------------------------------------------------

NO_LIGHTLY = ("error: the reference side needs lightly: `make install-test` (or "
              "`.venv/bin/pip install -r requirements-test.txt`)")


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
    amp_dtype = torch.bfloat16 if s.AMP.DTYPE == "bfloat16" else torch.float16
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
        with torch.autocast(device.type, dtype=amp_dtype, enabled=s.AMP.ENABLED):
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


# --- detection --------------------------------------------------------------------------------

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


# --- the loader alone ----------------------------------------------------------------------------

def loader_paths(cfg) -> dict:
    """{name: fn(k) -> the k-th sample of that path}: decoding alone (the limit), our views
    (loader-side recipe; device-side share; device-decode share), lightly's transform."""
    import cv2
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    from pretrain.data import ImageFiles, SeededViews, build_views
    from pretrain.data.device_decode import EncodedViews
    from pretrain.data.views import EncodedImage
    from ssl2det.images import decode_rgb

    torch.set_num_threads(1)  # one loader worker: one core, as DataLoader sets in its workers
    cv2.setNumThreads(1)
    folder = ImageFiles(cfg.DATA.ROOT)
    paths, n = [p for p, _ in folder.samples], len(folder)
    paths_ = {
        "decode only: Pillow (ssl2det.images.decode_rgb)": lambda k: decode_rgb(paths[k % n]),
        "decode only: OpenCV (ours)": lambda k: EncodedImage(paths[k % n]).decode(),
        "decode only: torchvision.io.decode_jpeg": lambda k: decode_jpeg(
            read_file(paths[k % n]), mode=ImageReadMode.RGB)}

    def views(recipe):
        dataset = SeededViews(folder, recipe, cfg.SEED)
        return lambda k: dataset[(k % n, k // n)]
    paths_["ours: loader-side recipe"] = views(build_views(cfg, augment_on_device=False))
    if cfg.INPUT.AUGMENTATION == "simclr":
        paths_["ours: device-side, workers decode + crop + flip"] = views(
            build_views(cfg, augment_on_device=True))
        paths_["ours: INPUT.DECODE_ON_DEVICE, workers read + draw crops"] = views(
            EncodedViews(cfg.INPUT.SIZE, cfg.INPUT.CROP_SCALE))
    transform, name = lightly_transform(cfg)
    reference = torchvision.datasets.ImageFolder(cfg.DATA.ROOT, transform=transform)
    paths_[f"lightly {name}"] = lambda k: reference[k % n]
    return paths_


def measure_loader(cfg, images: int, repeats: int) -> dict:
    """Two-view samples per second of one core (process CPU time) on each path, the paths
    alternating `repeats` times (median), after 5 untimed samples each."""
    paths = loader_paths(cfg)
    rates = {name: [] for name in paths}
    for repeat in range(repeats):
        for name, sample in paths.items():
            start_index = repeat * (images + 5)
            for k in range(start_index, start_index + 5):
                sample(k)
            start = time.process_time()
            for k in range(start_index + 5, start_index + 5 + images):
                sample(k)
            rates[name].append(images / (time.process_time() - start))
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {name: {"samples_per_s_per_core": statistics.median(r),
                   "ms_per_sample": 1000 / statistics.median(r), "runs": r}
            for name, r in rates.items()}


def report_loader(args, cfg, results):
    import cv2
    import PIL

    rows = [[name, r["samples_per_s_per_core"], r["ms_per_sample"]] for name, r in results.items()]
    print(tabulate(rows, headers=["path (one core)", "samples/s", "ms/sample"],
                   tablefmt="github", floatfmt=".4g"))
    rate = {name: r["samples_per_s_per_core"] for name, r in results.items()}
    lightly = next(v for k, v in rate.items() if k.startswith("lightly"))
    limit = max(v for k, v in rate.items() if k.startswith("decode only"))
    summary = {"ratio_loader_side_vs_lightly": rate["ours: loader-side recipe"] / lightly,
               "decode_limit_samples_per_s_per_core": limit}
    device_side = rate.get("ours: device-side, workers decode + crop + flip")
    if device_side:
        summary["device_side_share_of_decode_limit"] = device_side / limit
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")
    if args.output:
        record = {"task": "loader", "config_file": args.config_file, "overrides": args.opts,
                  "images": args.images, "repeats": args.repeats, "size": cfg.INPUT.SIZE,
                  "data_root": cfg.DATA.ROOT,
                  "files": sum(len(f) for _, _, f in os.walk(cfg.DATA.ROOT)), "cpu": _cpu_name(),
                  "torch": torch.__version__, "opencv": cv2.__version__,
                  "pillow": PIL.__version__, "results": results, **summary}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


def tile_folder(source: str, target: str, repeat: int) -> int:
    """`repeat` links per image of the ImageNet-layout `source` in `target` (the loader still
    reads a full-size file each time); returns the number of files."""
    count = 0
    for image in sorted(Path(source).resolve().rglob("*")):
        if not image.is_file():
            continue
        folder = Path(target) / image.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(repeat):
            link = folder / f"{image.stem}_{k}{image.suffix}"
            if not link.exists():
                link.symlink_to(image)
            count += 1
    return count


# --- start-up at ImageNet scale -------------------------------------------------------------------

def synthetic_tree(tree: Path, files: int, classes: int, source_image: str) -> None:
    """`files` hard links to one real JPEG in `classes` class folders (what listing costs is the
    names; one inode keeps a tmpfs small); folder times set a minute back, as a data set's are."""
    marker = tree / f".complete_{files}_{classes}"
    if marker.exists():
        return
    per_class = -(-files // classes)
    made = 0
    tree.mkdir(parents=True, exist_ok=True)
    original = tree / ".source.JPEG"  # on the tree's file system: links cannot cross them
    shutil.copyfile(source_image, original)
    for c in range(classes):
        folder = tree / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(min(per_class, files - made)):
            link = folder / f"n{c:08d}_{k}.JPEG"
            if not link.exists():
                os.link(original, link)
        made += per_class
    past = time.time() - 60
    for folder in [tree, *tree.iterdir()]:
        os.utime(folder, (past, past))
    marker.touch()


def first_batch_seconds(args) -> dict:
    """In this process: seconds from nothing to the first training batch."""
    from pretrain.config import load_config
    from pretrain.data import build_pretrain_loader

    with tempfile.TemporaryDirectory() as scratch:
        cfg = load_config(args.config_file, list(args.opts) + [
            "DATA.ROOT", args.tree, "OUTPUT_DIR", scratch,
            "DATA.FILE_INDEX", str(args.side != "no index"), "DATA.INDEX_DIR", args.index_dir])
        start = time.perf_counter()
        loader, sampler = build_pretrain_loader(cfg, 0, 1)
        listed = time.perf_counter() - start
        sampler.set_epoch(0, 0)
        next(iter(loader))
        first_batch = time.perf_counter() - start
    return {"seconds_to_first_batch": first_batch, "seconds_to_list": listed,
            "files": len(loader.dataset)}


STARTUP_SIDES = ("no index", "index: first start (lists, writes)", "index: next start (reads)")


def measure_startup(args) -> dict:
    tree = Path(args.tree)
    source = next(p for p in sorted(Path(args.source).rglob("*.JPEG")))
    print(f"synthetic tree: {args.files} files in {args.classes} folders under {tree} ...",
          file=sys.stderr, flush=True)
    synthetic_tree(tree, args.files, args.classes, str(source))
    runs = {side: [] for side in STARTUP_SIDES}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            index_dir = os.path.join(scratch, f"index{repeat}")
            for side in STARTUP_SIDES:
                log, result = (Path(scratch) / f"startup{repeat}.{ext}" for ext in ("log", "json"))
                cmd = [sys.executable, os.path.abspath(__file__), "startup", "--side", side,
                       "--result", result, "--config-file", args.config_file, "--tree", args.tree,
                       "--index-dir", index_dir, *args.opts]
                print(f"measuring {side} ...", file=sys.stderr, flush=True)
                if run_logged(cmd, log) or not result.is_file():
                    raise SystemExit(f"error: measuring {side} failed:\n{log_tail(log, 40)}")
                runs[side].append(json.loads(result.read_text()))
    return {side: {"seconds_to_first_batch": statistics.median(
                       r["seconds_to_first_batch"] for r in results),
                   "seconds_to_list": statistics.median(r["seconds_to_list"] for r in results),
                   "runs": [r["seconds_to_first_batch"] for r in results]}
            for side, results in runs.items()}


def report_startup(args, results):
    rows = [[side, r["seconds_to_first_batch"], r["seconds_to_list"]] for side, r in results.items()]
    print(tabulate(rows, headers=["start", "s to first batch", "s to list"], tablefmt="github",
                   floatfmt=".3g"))
    if args.output:
        record = {"task": "startup", "config_file": args.config_file, "overrides": args.opts,
                  "files": args.files, "classes": args.classes, "tree": args.tree,
                  "repeats": args.repeats, "cpu": _cpu_name(), "results": results}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")


# --- driver -----------------------------------------------------------------------------------

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
                cmd = [sys.executable, os.path.abspath(__file__), args.task, "--side", side,
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
                  "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "results": results, "ratio": ratio, **extra}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("pretrain", "detection", "loader", "startup", "tile"))
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
                        help="startup: files of the synthetic tree (default ImageNet's 1,281,167)")
    parser.add_argument("--classes", type=int, default=1000, help="startup: class folders")
    parser.add_argument("--tree", default="/dev/shm/ssl2det-startup-tree",
                        help="startup: where the synthetic tree is made (kept for reruns)")
    parser.add_argument("--source", default=str(Path(__file__).resolve().parents[2] / "shared"
                                               / "data" / "imagenet-sample"),
                        help="startup: a folder with a real JPEG to link to")
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
    if not args.config_file:
        parser.error("--config-file is required")
    if args.side:
        result = first_batch_seconds(args) if args.task == "startup" else measure_one(args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    if args.task == "loader":
        from pretrain.config import load_config

        cfg = load_config(args.config_file, args.opts)
        report_loader(args, cfg, measure_loader(cfg, args.images, args.repeats))
        return 0
    if args.task == "startup":
        report_startup(args, measure_startup(args))
        return 0
    sides = PRETRAIN_SIDES if args.task == "pretrain" else DETECTION_SIDES
    if args.sides == "ours":
        sides = sides[:1]
    report(args, run_sides(args, sides), sides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
