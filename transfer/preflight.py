"""The pipeline's pre-flight: every input a run will need, checked before any stage starts.

A missing VOC folder found after two days of pretraining costs two days. So before the first
stage the pipeline reads every config with its overrides, looks at every image folder (readable,
how many images), resolves every detectron2 data set the fine-tuning and evaluation stages name
(the run file's registrations, detectron2's builtin names under $DETECTRON2_DATASETS), checks
every weights file, and estimates the disk the checkpoints will take. Everything missing is
reported at once, each with what was expected; no stage starts. `tools/pipeline.py RUN --check`
runs only this.
"""

import os
import shutil

from detectron2.data import DatasetCatalog, MetadataCatalog

from ssl2det.errors import UserError

from .data import dataset_problems
from .spec import PipelineError
from .train_net import build_parser, register_datasets

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: Bytes of one checkpoint (weights, optimiser state, besides) per trainable parameter, and the
#: parameters of the models, for the disk estimate: our rough figures.
CHECKPOINT_BYTES_PER_PARAMETER = 12
PARAMETERS = {"resnet18": 11.7e6, "resnet50": 25.6e6, "detector": 45e6}


class PreflightError(PipelineError):
    """Inputs of the run are missing; the message lists each with the stages it would stop."""

    exit_code = 2


def count_images(root: str) -> int:
    return sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in
               os.walk(root, followlinks=True) for f in files)


def _folder_problem(what: str, root: str, seen: dict):
    """None when `root` holds images (their count goes into `seen`), else the problem."""
    if root in seen:
        return None
    if not root:
        return f"{what}: no folder given"
    if not os.path.isdir(root):
        return f"{what}: folder {root} does not exist (expected ROOT/<class>/<image>.jpg)"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"{what}: folder {root} is not readable"
    seen[root] = count_images(root)
    if not seen[root]:
        return f"{what}: folder {root} holds no image (expected ROOT/<class>/<image>.jpg)"
    return None


def _grouped(found) -> list:
    """One line per distinct problem, with the stages it stops (the first three named)."""
    stages = {}
    for label, problem in found:
        stages.setdefault(problem, []).append(label)
    lines = []
    for problem, labels in stages.items():
        more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
        lines.append(f"{problem} [{', '.join(labels[:3])}{more}]")
    return lines


def _checkpoints(stage) -> int:
    """How many checkpoints a training stage keeps (every period, and the final one)."""
    cfg = stage.config
    period = cfg.SOLVER.CHECKPOINT_PERIOD
    iters = cfg.SOLVER.MAX_ITER
    return (iters // period if period and iters > 0 else 0) + 1


def preflight(spec, stages) -> str:
    """Check every input of `stages`; returns a one-line summary, or raises PreflightError
    listing every problem found."""
    found, folders, disk = [], {}, 0.0  # found: (stage label, problem)
    registration = _register_datasets(spec) if any(
        stage.kind in ("finetune", "evaluate") for stage in stages) else []
    datasets = {}  # data set names -> their problems, each checked once
    for stage in stages:
        problems = []
        kind = stage.kind
        try:
            if kind == "pretrain":
                cfg = stage.config  # reads the config file with its overrides
                for key, root in (("DATA.ROOT", cfg.DATA.ROOT), ("KNN.TRAIN_ROOT", cfg.KNN.TRAIN_ROOT),
                                  ("DATA.VAL_ROOT", cfg.DATA.VAL_ROOT)):
                    if root or key == "DATA.ROOT":
                        problems.append(_folder_problem(key, root, folders))
                if not stage.is_complete():
                    disk += (PARAMETERS.get(cfg.MODEL.ARCH, PARAMETERS["resnet50"])
                             * CHECKPOINT_BYTES_PER_PARAMETER
                             * _pretrain_checkpoints(cfg, folders.get(cfg.DATA.ROOT, 0)))
            elif kind == "convert" and not stage.upstream_key:
                if not os.path.isfile(stage.source):
                    problems.append(f"weights file {stage.source} does not exist")
            elif kind in ("finetune", "evaluate"):
                cfg = stage.config
                names = tuple(cfg.DATASETS.TRAIN if kind == "finetune" else cfg.DATASETS.TEST)
                if names not in datasets:
                    datasets[names] = dataset_problems(names)
                problems += registration + datasets[names]
                if kind == "finetune" and not stage.is_complete():
                    disk += PARAMETERS["detector"] * CHECKPOINT_BYTES_PER_PARAMETER * _checkpoints(stage)
                    external = spec.external.get(stage.weights_from)
                    if external and external.is_detectron2 and not os.path.isfile(external.weights):
                        problems.append(f"weights file {external.weights} does not exist")
            elif kind == "probe":
                for key, root in (("train_root", spec.probe.train_root),
                                  ("val_root", spec.probe.val_root)):
                    problems.append(_folder_problem(f"probe {key}", root, folders))
        except UserError as e:  # a bad config file or override
            problems.append(str(e))
        found += [(stage.label, p) for p in problems if p]
    problems = _grouped(found)
    root = spec.layout.root
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if disk > free:
        problems.append(f"disk: the checkpoints need about {disk / 1e9:.1f} GB, {existing} has "
                        f"{free / 1e9:.1f} GB free (raise SOLVER.CHECKPOINT_PERIOD or free space)")
    if problems:
        raise PreflightError(f"pre-flight found {len(problems)} problem(s), nothing was started:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    counts = ", ".join(f"{root} ({n} images)" for root, n in folders.items())
    summary = f"{len(stages)} stage{'s' * (len(stages) != 1)}, every input found"
    if counts:
        summary += f"; image folders: {counts}"
    return summary + f"; checkpoints need about {disk / 1e9:.1f} GB of {free / 1e9:.0f} GB free"


def _pretrain_checkpoints(cfg, images: int) -> int:
    """Checkpoints a pretraining run keeps: one per period of its iterations, and the last."""
    iterations = cfg.SOLVER.EPOCHS * (images // cfg.SOLVER.BATCH_SIZE)
    if cfg.SOLVER.MAX_ITER > 0:
        iterations = min(iterations, cfg.SOLVER.MAX_ITER) if iterations else cfg.SOLVER.MAX_ITER
    return iterations // cfg.SOLVER.CHECKPOINT_PERIOD + 1


def _register_datasets(spec) -> list:
    """Register the run file's own data sets as train_net will (again, if an earlier check
    registered them); returns what is wrong with them (a folder or file that is not there)."""
    args = build_parser().parse_args(["--config-file", "", *spec.dataset_args])
    for name, *_ in (*args.register_coco, *args.register_voc, *args.register_semseg):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    try:
        register_datasets(args)
    except UserError as e:
        return [str(e)]
    return []
