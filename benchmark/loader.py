"""The benchmark's loader alone: two-view samples/s of one core for every path (decode only,
ours loader-side and device-side, lightly's transform), beside the decode limit."""

import json
import os
import statistics
import sys
import time

import torch
from tabulate import tabulate

from .machine import machine
from .steps import lightly_transform

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
    return measure_paths(loader_paths(cfg), images, repeats)


def measure_paths(paths: dict, images: int, repeats: int) -> dict:
    """Samples per second of one core (process CPU time) on each of `paths` ({name: fn(k) ->
    the k-th sample}), the paths alternating `repeats` times (median), after 5 untimed samples
    each."""
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
                  "files": sum(len(f) for _, _, f in os.walk(cfg.DATA.ROOT)), **machine(),
                  "opencv": cv2.__version__,
                  "pillow": PIL.__version__, "results": results, **summary}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")
