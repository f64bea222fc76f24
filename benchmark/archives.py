"""The benchmark's tars (pretrain/data/archives.py): two-view samples/s of one core read from
ImageNet's archive layout and from WebDataset shards against the same images in a folder
(`layouts`), and the index of a synthetic ImageNet-sized archive (`tar-index`): seconds and
memory to build it, seconds to reuse it."""

import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from .loader import measure_paths
from .machine import machine

LAYOUTS = ("folder", "archive (tar of per-class tars)", "WebDataset shards")


def write_imagenet_archive(folder: str, path: str) -> None:
    """ILSVRC2012_img_train.tar's layout from an image folder: a tar per class (the files that
    links point to, as a tiled folder has them)."""
    with tarfile.open(path, "w") as outer:
        for label in sorted(os.listdir(folder)):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w", dereference=True) as tar:
                for name in sorted(os.listdir(os.path.join(folder, label))):
                    tar.add(os.path.join(folder, label, name), arcname=name)
            info = tarfile.TarInfo(f"{label}.tar")
            info.size = inner.tell()
            inner.seek(0)
            outer.addfile(info, inner)


def measure_layouts(cfg, images: int, repeats: int) -> dict:
    """Our loader-side views of DATA.ROOT read from each layout, the layouts alternating
    `repeats` times (median of the process CPU time), after 5 untimed samples each."""
    import cv2
    import torch

    from pretrain.data import SeededViews, build_views
    from pretrain.data.layouts import open_images
    from pretrain.data.shards import write_shards

    torch.set_num_threads(1)  # one loader worker: one core
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as scratch:
        archive = os.path.join(scratch, "train.tar")
        write_imagenet_archive(cfg.DATA.ROOT, archive)
        shards = write_shards(cfg.DATA.ROOT, os.path.join(scratch, "shards"), 100,
                              progress=False)
        views = build_views(cfg, augment_on_device=False)
        datasets = {layout: SeededViews(open_images(root), views, cfg.SEED) for layout, root in
                    zip(LAYOUTS, (cfg.DATA.ROOT, archive, shards))}
        n = len(datasets["folder"])
        results = measure_paths({layout: (lambda k, d=dataset: d[(k % n, k // n)])
                                 for layout, dataset in datasets.items()}, images, repeats)
    folder = results["folder"]["samples_per_s_per_core"]
    for result in results.values():
        result["ratio_to_folder"] = result["samples_per_s_per_core"] / folder
    return results


def report_layouts(args, cfg, results) -> None:
    rows = [[layout, r["samples_per_s_per_core"], r["ratio_to_folder"]]
            for layout, r in results.items()]
    print(tabulate(rows, headers=["read from (one core)", "samples/s", "x folder"],
                   tablefmt="github", floatfmt=".3g"))
    _save(args, {"task": "layouts", "config_file": args.config_file, "overrides": args.opts,
                 "images": args.images, "repeats": args.repeats, "size": cfg.INPUT.SIZE,
                 "data_root": cfg.DATA.ROOT, "results": results})


def synthetic_archive(path: Path, files: int, classes: int) -> None:
    """ImageNet's archive layout with `files` empty .JPEG members in `classes` inner tars (the
    index reads headers; the members' data is only skipped over)."""
    marker = path.with_name(path.name + f".complete_{files}_{classes}")
    if marker.exists():
        return
    per_class = -(-files // classes)
    made = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as outer:
        for c in range(classes):
            inner = io.BytesIO()
            for k in range(min(per_class, files - made)):
                inner.write(tarfile.TarInfo(f"n{c:08d}_{k}.JPEG").tobuf(tarfile.USTAR_FORMAT))
            inner.write(b"\0" * 1024)  # the end-of-archive blocks
            made += per_class
            info = tarfile.TarInfo(f"n{c:08d}.tar")
            info.size = inner.tell()
            inner.seek(0)
            outer.addfile(info, inner)
    marker.touch()


def index_side(archive: str, index_dir: str) -> dict:
    """In this process: seconds to the index and the memory it took (peak RSS above the RSS
    before it)."""
    from pretrain.data.archives import load_tar_index

    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    start = time.perf_counter()
    index = load_tar_index(archive, index_dir)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "peak_rss_above_start_mb": (peak - before) / 2**20,
            "members": len(index)}


def measure_tar_index(args) -> dict:
    archive = Path(args.tree) / "ILSVRC2012_img_train_synthetic.tar"
    print(f"synthetic archive: {args.files} members in {args.classes} tars at {archive} ...",
          file=sys.stderr, flush=True)
    synthetic_archive(archive, args.files, args.classes)
    runs = {"build": [], "reuse": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            index_dir = os.path.join(scratch, f"index{repeat}")
            for side in runs:  # each in a fresh process: its own peak memory
                code = ("import json, sys; from benchmark.archives import index_side; "
                        "print(json.dumps(index_side(sys.argv[1], sys.argv[2])))")
                out = subprocess.run([sys.executable, "-c", code, str(archive), index_dir],
                                     capture_output=True, text=True, check=True)
                runs[side].append(json.loads(out.stdout.splitlines()[-1]))
                print(f"{side}: {runs[side][-1]}", file=sys.stderr, flush=True)
    return {side: {key: statistics.median(r[key] for r in results)
                   for key in ("seconds", "peak_rss_above_start_mb", "members")}
            for side, results in runs.items()} | {"archive_bytes": archive.stat().st_size}


def report_tar_index(args, results) -> None:
    rows = [[side, r["seconds"], r["peak_rss_above_start_mb"], r["members"]]
            for side, r in results.items() if side != "archive_bytes"]
    print(tabulate(rows, headers=["index", "s", "MB above start", "members"],
                   tablefmt="github", floatfmt=".3g"))
    _save(args, {"task": "tar-index", "files": args.files, "classes": args.classes,
                 "repeats": args.repeats, "results": results})


def _save(args, record) -> None:
    if args.output:
        record.update(machine())
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")
