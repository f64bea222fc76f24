"""The evaluation results of stage two: which metrics are the headline, and final_metrics.json
(the pipeline's "evaluated" marker and the report's source)."""

import json
import os

from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer
from detectron2.utils import comm

from ssl2det.io import atomic_write

#: The metrics printed after an evaluation and shown in the pipeline's report.
HEADLINE = ("AP", "AP50", "AP75", "mIoU", "fwIoU", "mACC", "pACC")
FINAL_METRICS = "final_metrics.json"


def flatten_results(results) -> dict:
    """{"bbox/AP": ..., "segm/AP50": ..., "sem_seg/mIoU": ...} from detectron2's nested dict."""
    return {f"{task}/{name}": value for task, metrics in results.items()
            for name, value in metrics.items()}


def headline(results) -> dict:
    """The HEADLINE entries of flatten_results(results), in the order detectron2 gave them."""
    return {k: v for k, v in flatten_results(results).items() if k.split("/")[-1] in HEADLINE}


def save_final_metrics(cfg, results) -> str:
    """Write the evaluation results as JSON in OUTPUT_DIR, with how the run ran ("run": world
    size, batch after detectron2's rescaling, images per process, test images); returns the
    path."""
    world = comm.get_world_size()
    batch = DefaultTrainer.auto_scale_workers(cfg, world).SOLVER.IMS_PER_BATCH
    run = {"world_size": world, "ims_per_batch": batch, "images_per_process": batch / world,
           "reference_world_size": cfg.SOLVER.REFERENCE_WORLD_SIZE,
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
