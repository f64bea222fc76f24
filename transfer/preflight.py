"""The pipeline's pre-flight: every input a run will need, checked before any stage starts.

A missing VOC folder found after two days of pretraining costs two days. So before the first
stage the pipeline reads every config with its overrides, looks at every image folder (readable,
how many images), resolves every detectron2 data set the fine-tuning and evaluation stages name
(the run file's registrations, detectron2's builtin names under $DETECTRON2_DATASETS, VOC's
image lists), opens every weights file with the safe loader and checks its architecture
against the one each fine-tuning builds (a pretraining's too, from its config), checks that the
metrics the report reads are ones the evaluator reports, that the output folder can be written
and that no other pipeline holds it, and estimates the disk the checkpoints will take.
Everything wrong is reported at once, each with what was expected; no stage starts.
`tools/pipeline.py RUN --check` runs only this.
"""

import difflib
import os
import pickle
import shutil

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from pretrain.data.archives import is_tar_root, load_tar_index, refuse_compressed_tar
from pretrain.data.build import file_index_dir
from ssl2det.errors import DatasetError, UserError
from ssl2det.io import check_weights_pickle
from ssl2det.output_dir import output_dir_holder

from .convert import ARCHS, ConversionError, convert_checkpoint
from .data import dataset_problems
from .metrics import known_metrics
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


def count_images(root: str, index_dir: str = "") -> int:
    """The images of a folder, or of an archive or shards (their index, kept in `index_dir`
    for the pretraining that reads them)."""
    if is_tar_root(root):
        return len(load_tar_index(root, index_dir))
    return sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in
               os.walk(root, followlinks=True) for f in files)


def _folder_problem(what: str, root: str, seen: dict, index_dir: str = ""):
    """None when `root` holds images (their count goes into `seen`), else the problem."""
    if root in seen:
        return None
    if not root:
        return f"{what}: no folder given"
    try:
        refuse_compressed_tar(root)
        if is_tar_root(root):
            seen[root] = count_images(root, index_dir)
            return None
    except DatasetError as e:
        return f"{what}: {e}"
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
    period, keep = cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINTS_TO_KEEP
    iters = cfg.SOLVER.MAX_ITER
    periodic = iters // period if period and iters > 0 else 0
    return (min(periodic, keep) if keep else periodic) + 1


def output_dir_problem(root) -> str:
    """Why the run folder cannot be used ("" when it can): a file, unwritable (read-only, no
    permission), or held by another live pipeline."""
    if root.exists() and not root.is_dir():
        return f"output_dir {root} is a file, not a folder; choose another output_dir"
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        return f"output_dir {root} lies under the file {existing}; choose another output_dir"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"output_dir {root} cannot be written ({existing} is read-only or not yours); "
                "choose another output_dir")
    holder = output_dir_holder(str(root))
    if holder:
        return (f"output_dir {root} is in use by {holder}: two pipelines in one folder would "
                "mix their runs; wait for it, stop it, or use another output_dir")
    return ""


def _arch_of_detectron2_weights(path: str):
    """The ResNet of a detectron2-format .pkl (stem / resN.K names), or None where its names
    are another layout (Caffe2's res2_0_branch2a_w: detectron2 maps those itself)."""
    check_weights_pickle(path)
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # plain data only: checked just above
    names = list((data.get("model", data) if isinstance(data, dict) else {}))
    blocks = tuple(len({k.split(f"res{s}.")[1].split(".")[0] for k in names if f"res{s}." in k})
                   for s in range(2, 6))
    if not all(blocks):
        return None
    model = data.get("model", data) if isinstance(data, dict) else {}
    broken = next((k for k, v in model.items() if getattr(v, "dtype", None) is not None
                   and v.dtype.kind == "f" and not np.isfinite(v).all()), None)
    if broken:
        raise ConversionError(f"the tensor {broken} holds NaN or infinite values: the weights are "
                              "damaged (a diverged run's checkpoint?)")
    bottleneck = any(".conv3." in k for k in names)
    return next((a for a, (layout, b) in ARCHS.items() if layout == blocks and b == bottleneck),
                f"an unknown ResNet ({blocks} {'bottleneck' if bottleneck else 'basic'} blocks)")


def _weights_arch(path):
    """(architecture or None, problem or None) of an external backbone's file, opened as the
    conversion (or detectron2, for a .pkl) will open it."""
    path = str(path)
    if os.path.isdir(path):
        return None, f"weights file {path} is a folder: give the checkpoint file in it"
    if not os.path.isfile(path):
        return None, f"weights file {path} does not exist"
    try:
        if path.endswith(".pkl"):
            return _arch_of_detectron2_weights(path), None
        return convert_checkpoint(path).arch, None
    except UserError as e:
        return None, f"weights file {path}: {e}"


def _task_arch(cfg) -> str:
    return f"resnet{cfg.MODEL.RESNETS.DEPTH}"


def _arch_problem(weights_arch: str, cfg, backbone: str) -> str:
    wanted = _task_arch(cfg)
    if not weights_arch or weights_arch == wanted:
        return ""
    return (f"backbone {backbone} is a {weights_arch}, but the task's config builds a {wanted} "
            f"(MODEL.RESNETS.DEPTH {cfg.MODEL.RESNETS.DEPTH}): the fine-tuning would start "
            "from a mostly random body. Give weights of that depth, or set MODEL.RESNETS.DEPTH "
            "(and RES2_OUT_CHANNELS 64 for ResNet-18/34, with an FPN config) in its overrides")


def _as_typed(name: str) -> str:
    return name.lower().replace("o", "0").replace("l", "1")


def _metric_problems(task, cfg) -> list:
    """The task's metric and its references' metrics must be ones its evaluator reports (a
    misspelt one would fail the report after every stage ran)."""
    wanted = [("metric", task.metric)] if task.metric else []
    wanted += [(f"reference {r.label!r}", r.metric) for r in task.references]
    if not wanted or not cfg.DATASETS.TEST:
        return []
    known = known_metrics(cfg)
    problems = []
    for what, metric in wanted:
        if metric not in known:
            typed = {_as_typed(m): m for m in known}  # O for 0, l for 1, case
            close = ([typed[_as_typed(metric)]] if _as_typed(metric) in typed
                     else difflib.get_close_matches(metric, known, n=1))
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"transfer {task.name}: {what} names {metric!r}, which its "
                            f"evaluator does not report{hint} (it reports "
                            f"{', '.join(m for m in known if '-' not in m)})")
    return problems


def preflight(spec, stages, cluster=()) -> str:
    """Check every input of `stages`; returns a one-line summary, or raises PreflightError
    listing every problem found (`cluster`: the executor's, transfer/executors/)."""
    found, folders, disk = [], {}, 0.0  # found: (stage label, problem)
    archs = {}  # backbone (replicate) name -> its ResNet, where known
    checked_tasks = set()
    registration = _register_datasets(spec) if any(
        stage.kind in ("finetune", "evaluate") for stage in stages) else []
    datasets = {}  # data set names -> their problems, each checked once
    for stage in stages:
        problems = []
        kind = stage.kind
        try:
            if kind == "pretrain":
                cfg = stage.config  # reads the config file with its overrides
                archs[stage.name] = cfg.MODEL.ARCH
                if cfg.MODEL.CIFAR_STEM and _feeds_transfer(spec, stage.run_spec.name):
                    problems.append(f"pretrain {stage.run_spec.name} has MODEL.CIFAR_STEM True "
                                    "(a 3x3 stem without max-pool), which detectron2's ResNet "
                                    "cannot take: its conversion would fail after pretraining")
                for key, root in (("DATA.ROOT", cfg.DATA.ROOT), ("KNN.TRAIN_ROOT", cfg.KNN.TRAIN_ROOT),
                                  ("DATA.VAL_ROOT", cfg.DATA.VAL_ROOT)):
                    if root or key == "DATA.ROOT":
                        problems.append(_folder_problem(key, root, folders,
                                                        file_index_dir(cfg)))
                if not stage.is_complete():
                    disk += (PARAMETERS.get(cfg.MODEL.ARCH, PARAMETERS["resnet50"])
                             * CHECKPOINT_BYTES_PER_PARAMETER
                             * _pretrain_checkpoints(cfg, folders.get(cfg.DATA.ROOT, 0)))
            elif kind == "convert" and not stage.upstream_key:
                archs[stage.name], problem = _weights_arch(stage.source)
                problems.append(problem)
            elif kind in ("finetune", "evaluate"):
                cfg = stage.config
                names = tuple(cfg.DATASETS.TRAIN if kind == "finetune" else cfg.DATASETS.TEST)
                if names not in datasets:
                    datasets[names] = dataset_problems(names)
                problems += registration + datasets[names]
                if kind == "finetune" and not stage.is_complete():
                    disk += PARAMETERS["detector"] * CHECKPOINT_BYTES_PER_PARAMETER * _checkpoints(stage)
                    external = spec.external.get(stage.weights_from)
                    if external and external.is_detectron2 and stage.weights_from not in archs:
                        archs[stage.weights_from], problem = _weights_arch(external.weights)
                        problems.append(problem)
                if kind == "finetune":
                    problems.append(_arch_problem(archs.get(stage.weights_from), cfg,
                                                  stage.weights_from))
                if kind == "evaluate" and stage.task.name not in checked_tasks and not (
                        registration or datasets[names]):
                    checked_tasks.add(stage.task.name)
                    problems += _metric_problems(stage.task, cfg)
            elif kind == "probe":
                for key, root in (("train_root", spec.probe.train_root),
                                  ("val_root", spec.probe.val_root)):
                    problems.append(_folder_problem(f"probe {key}", root, folders))
        except UserError as e:  # a bad config file or override
            problems.append(str(e))
        found += [(stage.label, p) for p in problems if p]
    problems = _grouped(found) + list(cluster)
    root = spec.layout.root
    if output_dir_problem(root):
        problems.append(output_dir_problem(root))
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


def _feeds_transfer(spec, run: str) -> bool:
    return any(run in task.backbones for task in spec.transfer)


def _pretrain_checkpoints(cfg, images: int) -> int:
    """Checkpoints a pretraining run keeps: one per period of its iterations, and the last."""
    iterations = cfg.SOLVER.EPOCHS * (images // cfg.SOLVER.BATCH_SIZE)
    if cfg.SOLVER.MAX_ITER > 0:
        iterations = min(iterations, cfg.SOLVER.MAX_ITER) if iterations else cfg.SOLVER.MAX_ITER
    periodic, keep = iterations // cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.CHECKPOINTS_TO_KEEP
    return (min(periodic, keep) if keep else periodic) + 1


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
