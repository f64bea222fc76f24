"""Predictions drawn on test images (for the pipeline report and for people)."""

import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image


def save_predictions(cfg, model, dataset_name: str, out_dir: str, count: int,
                     score_threshold: float = 0.3) -> list:
    """Draw the first `count` images of a data set twice, side by side: the ground truth
    (boxes/masks or semantic labels) and the model's predictions (score >= threshold); returns
    the PNG paths."""
    os.makedirs(out_dir, exist_ok=True)
    metadata = MetadataCatalog.get(dataset_name)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    model.eval()
    paths = []
    for record in DatasetCatalog.get(dataset_name)[:count]:
        rgb = read_image(record["file_name"], format="RGB")
        image = rgb if cfg.INPUT.FORMAT == "RGB" else rgb[:, :, ::-1]
        resized = resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        with torch.no_grad():
            out = model([{"image": tensor, "height": rgb.shape[0], "width": rgb.shape[1]}])[0]
        if "instances" in out:
            instances = out["instances"].to("cpu")
            drawn = Visualizer(rgb, metadata).draw_instance_predictions(
                instances[instances.scores >= score_threshold])
        else:
            drawn = Visualizer(rgb, metadata).draw_sem_seg(out["sem_seg"].argmax(0).cpu())
        truth = Visualizer(rgb, metadata).draw_dataset_dict(record)
        gap = np.full((rgb.shape[0], 8, 3), 255, dtype=np.uint8)
        path = os.path.join(out_dir, os.path.splitext(os.path.basename(record["file_name"]))[0]
                            + ".png")
        Image.fromarray(np.concatenate([truth.get_image(), gap, drawn.get_image()], 1)).save(path)
        paths.append(path)
    return paths
