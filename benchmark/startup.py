"""The benchmark's start-up: seconds to the first batch on a synthetic ImageNet-sized tree of
hard links, without and with the file index."""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

from ssl2det.process import log_tail, run_logged

from .machine import machine

STARTUP_SIDES = ("no index", "index: first start (lists, writes)", "index: next start (reads)")


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
                cmd = [sys.executable, "-m", "benchmark", "startup", "--side", side,
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
                  "repeats": args.repeats, **machine(), "results": results}
        with open(args.output, "w") as f:
            json.dump(record, f, indent=1)
        print(f"saved to {args.output}")

