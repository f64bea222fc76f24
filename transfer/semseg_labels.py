"""Semantic label PNGs from COCO-format instance annotations, so the semantic-segmentation head
can be trained on any COCO-format data set."""

import json
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

IGNORE = 255


def coco_to_semseg(json_file: str, out_dir: str) -> list:
    """Write one label PNG per image (`<image stem>.png`: 0 = background, 1..K = the categories
    in id order, 255 = crowd regions) and `classes.json`; returns the class names.
    Larger instances are drawn first, so a small object on top of a large one keeps its label."""
    from pycocotools.coco import COCO

    coco = COCO(json_file)
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) >= IGNORE:
        raise ValueError(f"{json_file} has {len(cat_ids)} categories; label PNGs hold at most 254")
    label_of = {cat: i + 1 for i, cat in enumerate(cat_ids)}
    classes = ["background"] + [coco.cats[c]["name"] for c in cat_ids]
    os.makedirs(out_dir, exist_ok=True)
    for image in tqdm(coco.imgs.values(), desc="semantic labels", unit="image"):
        label = np.zeros((image["height"], image["width"]), dtype=np.uint8)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        for ann in sorted(anns, key=lambda a: -a.get("area", 0)):
            label[coco.annToMask(ann) > 0] = IGNORE if ann.get("iscrowd") else label_of[
                ann["category_id"]]
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        Image.fromarray(label, mode="L").save(os.path.join(out_dir, f"{stem}.png"))
    with open(os.path.join(out_dir, "classes.json"), "w") as f:
        json.dump(classes, f, indent=1)
    return classes
