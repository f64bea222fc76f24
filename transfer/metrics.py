"""The evaluation results of stage two: which metrics are the headline, and final_metrics.json
(the pipeline's "evaluated" marker and the report's source)."""

import json
import os

from detectron2.utils import comm

from ssl2det.io import atomic_write

#: The metrics printed after an evaluation and shown in the pipeline's report.
HEADLINE = ("AP", "AP50", "AP75", "mIoU", "fwIoU", "mACC", "pACC")
FINAL_METRICS = "final_metrics.json"

#: What detectron2's evaluators report, by evaluator type: {task: (metric, ...)}; per-class
#: entries ("AP-dog", "IoU-dog") come on top, one per class of the data set.
EVALUATOR_METRICS = {
    "coco": {"bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl"),
             "segm": ("AP", "AP50", "AP75", "APs", "APm", "APl")},
    "pascal_voc": {"bbox": ("AP", "AP50", "AP75")},
    "sem_seg": {"sem_seg": ("mIoU", "fwIoU", "mACC", "pACC")},
}
_PER_CLASS = {"coco": ("AP-",), "sem_seg": ("IoU-", "ACC-")}


def known_metrics(cfg) -> list:
    """The metric names ("bbox/AP50", ...) an evaluation of `cfg` on its first test set
    reports (its data set must be registered)."""
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    kind = metadata.get("evaluator_type", "coco")
    tasks = dict(EVALUATOR_METRICS.get(kind, {}))
    if kind == "coco" and not cfg.MODEL.MASK_ON:
        tasks.pop("segm")
    classes = metadata.get("stuff_classes" if kind == "sem_seg" else "thing_classes", None) or []
    return [f"{task}/{metric}" for task, metrics in tasks.items() for metric in metrics] + [
        f"{task}/{prefix}{name}" for task in tasks for prefix in _PER_CLASS.get(kind, ())
        for name in classes]


def flatten_results(results) -> dict:
    """{"bbox/AP": ..., "segm/AP50": ..., "sem_seg/mIoU": ...} from detectron2's nested dict."""
    return {f"{task}/{name}": value for task, metrics in results.items()
            for name, value in metrics.items()}


def headline(results) -> dict:
    """The HEADLINE entries of flatten_results(results), in the order detectron2 gave them."""
    return {k: v for k, v in flatten_results(results).items() if k.split("/")[-1] in HEADLINE}


def precision_of(cfg) -> dict:
    """What a stage-two run computes in, for its records: detectron2's AMP is float16 autocast
    on CUDA (native on every GPU it supports; on the CPU transfer.config turns it off), float32
    otherwise."""
    import torch

    from ssl2det.precision import describe_device

    return {"precision": "float16 autocast" if cfg.SOLVER.AMP.ENABLED else "float32",
            "device": describe_device(torch.device(cfg.MODEL.DEVICE))}


def save_final_metrics(cfg, results) -> str:
    """Write the evaluation results as JSON in OUTPUT_DIR, with how the run ran ("run": world
    size, batch after detectron2's rescaling, images per process, test images); returns the
    path."""
    # imported here, in the evaluation's process: the report reads these files without
    # detectron2's data and engine packages (torchvision: about 2 s a process)
    from detectron2.data import DatasetCatalog
    from detectron2.engine import DefaultTrainer

    world = comm.get_world_size()
    batch = DefaultTrainer.auto_scale_workers(cfg, world).SOLVER.IMS_PER_BATCH
    run = {"world_size": world, "ims_per_batch": batch, "images_per_process": batch / world,
           "reference_world_size": cfg.SOLVER.REFERENCE_WORLD_SIZE, **precision_of(cfg),
           "test_images": sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TEST)}
    path = os.path.join(cfg.OUTPUT_DIR, FINAL_METRICS)
    text = json.dumps({**results, "run": run}, indent=1, default=float)
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def read_final_metrics(folder) -> dict:
    """The results a run saved in `folder` ({} when there are none yet)."""
    path = os.path.join(folder, FINAL_METRICS)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
