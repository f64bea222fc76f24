"""Data sets for stage two: registration from the command line, VOC semantic segmentation,
a dataset mapper that reads label PNGs as stored, and the training mappers' bad-image policy."""

import copy
import json
import os

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.datasets import load_sem_seg, register_coco_instances
from detectron2.data.datasets.pascal_voc import CLASS_NAMES as VOC_CLASSES  # noqa: F401
from detectron2.data.datasets.pascal_voc import register_pascal_voc
from PIL import Image

from ssl2det.errors import ConfigError, DatasetError
from ssl2det.images import BadImages, printable_path


class DatasetRegistrationError(ConfigError):
    """A data set given on the command line cannot be used; the message says why."""


def _require(path, what, fix):
    if not os.path.exists(path):
        raise DatasetRegistrationError(f"{what} not found: {path}. {fix}")


def register_coco(name, json_file, image_dir):
    """`--register-coco NAME JSON IMAGE_DIR`: COCO-format instances (boxes, polygons)."""
    _require(json_file, "COCO json", "Give the instances_*.json of the data set.")
    _require(image_dir, "image folder", "Give the folder the json's file_name entries are in.")
    register_coco_instances(name, {}, json_file, image_dir)


def register_voc(name, voc_dir, split, class_names=VOC_CLASSES, year=2012):
    """`--register-voc NAME VOC_DIR SPLIT`: PASCAL VOC layout (Annotations/, JPEGImages/,
    ImageSets/Main/SPLIT.txt). `year` 2007 selects VOC07's 11-point AP in the evaluator;
    the default scores with the area under the precision-recall curve."""
    for sub in ("Annotations", "JPEGImages", f"ImageSets/Main/{split}.txt"):
        _require(os.path.join(voc_dir, sub), f"VOC {sub}", "Expected PASCAL VOC's layout.")
    register_pascal_voc(name, voc_dir, split, year, list(class_names))
    MetadataCatalog.get(name).evaluator_type = "pascal_voc"


def read_semseg_classes(label_dir: str) -> list:
    """LABEL_DIR/classes.json: the class names, index by index (tools/coco_to_semseg.py writes
    it); a DatasetRegistrationError naming the file when it is missing or not a list of names."""
    path = os.path.join(label_dir, "classes.json")
    fix = ("it must hold a JSON list of class names, label value 0 first (tools/coco_to_semseg.py "
           "writes one)")
    try:
        with open(path) as f:
            classes = json.load(f)
    except FileNotFoundError:
        raise DatasetRegistrationError(f"--register-semseg: {path} not found; {fix}") from None
    except (OSError, ValueError) as e:
        raise DatasetRegistrationError(f"--register-semseg: {path} cannot be read ({e}); "
                                       f"{fix}") from None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise DatasetRegistrationError(f"--register-semseg: {path} holds "
                                       f"{type(classes).__name__} {str(classes)[:60]}; {fix}")
    return classes


def register_semseg(name, image_dir, label_dir, classes, ignore_label=255, image_ext="jpg"):
    """Semantic segmentation from an image folder and a folder of label PNGs of the same names
    (pixel value = class index, `ignore_label` = unlabelled)."""
    _require(image_dir, "image folder", "")
    _require(label_dir, "label folder", "Make one with tools/coco_to_semseg.py.")
    DatasetCatalog.register(name, lambda: load_sem_seg(label_dir, image_dir, "png", image_ext))
    MetadataCatalog.get(name).set(stuff_classes=list(classes), ignore_label=ignore_label,
                                  evaluator_type="sem_seg", image_root=image_dir,
                                  sem_seg_root=label_dir)


#: The VOC 2012 segmentation sets: (image list under ImageSets/Segmentation, label folder).
#: train_aug is VOC 2012 train plus SBD's extra annotations (10,582 images), in the
#: "SegmentationClassAug" layout DeepLab made common: one label PNG of class indices per image.
VOC_SEMSEG_SPLITS = {"train": ("train.txt", "SegmentationClass"),
                     "val": ("val.txt", "SegmentationClass"),
                     "train_aug": ("train_aug.txt", "SegmentationClassAug")}


def _load_voc_semseg(voc_dir, split):
    image_list, labels = VOC_SEMSEG_SPLITS[split]
    path = os.path.join(voc_dir, "ImageSets/Segmentation", image_list)
    if not os.path.isfile(path):
        raise ConfigError(f"voc_2012_sem_seg_{split}: {path} does not exist; expected "
                          f"VOC2012/ImageSets/Segmentation/{image_list} and VOC2012/{labels}/ "
                          "(docs/transfer.md, semantic segmentation)")
    ids = open(path).read().split()
    return [{"file_name": os.path.join(voc_dir, "JPEGImages", f"{i}.jpg"),
             "sem_seg_file_name": os.path.join(voc_dir, labels, f"{i}.png"),
             "image_id": i} for i in ids]


def register_builtin_voc_semseg(root=None):
    """voc_2012_sem_seg_{train,val,train_aug} under DETECTRON2_DATASETS/VOC2012 (21 classes
    with background, 255 = boundary / ignore): VOC's SegmentationClass for train and val, SBD's
    labels in SegmentationClassAug for train_aug (VOC_SEMSEG_SPLITS)."""
    root = root or os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    voc_dir = os.path.join(root, "VOC2012")
    for split in VOC_SEMSEG_SPLITS:
        name = f"voc_2012_sem_seg_{split}"
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda s=split: _load_voc_semseg(voc_dir, s))
        MetadataCatalog.get(name).set(stuff_classes=["background", *VOC_CLASSES],
                                      ignore_label=255, evaluator_type="sem_seg", dirname=voc_dir)


def _voc_annotation_problems(name, metadata, listing) -> list:
    """The split's ids read as detectron2's VOC loader reads them: an Annotations/ID.xml for
    each, and every object's class among the data set's classes (detectron2 stops on the first
    one it lacks, "'dog' is not in list")."""
    import xml.etree.ElementTree as ET

    classes, problems, unknown = set(metadata.thing_classes), [], {}
    with open(listing) as f:
        ids = f.read().split()
    for image_id in ids:
        path = os.path.join(metadata.dirname, "Annotations", f"{image_id}.xml")
        try:
            objects = [o.findtext("name", "").strip() for o in ET.parse(path).findall("object")]
        except FileNotFoundError:
            problems.append(f"data set {name}: {listing} names {image_id}, but {path} does not "
                            "exist")
            continue
        except ET.ParseError as e:
            problems.append(f"data set {name}: {path} is not readable XML ({e})")
            continue
        for cls in objects:
            if cls not in classes:
                unknown.setdefault(cls, image_id)
    if unknown:
        found = ", ".join(f"{c!r} (e.g. {i})" for c, i in sorted(unknown.items())[:5])
        problems.append(f"data set {name}: its annotations name classes that are not among its "
                        f"classes ({', '.join(metadata.thing_classes)}): {found}; list them in "
                        "voc_classes (--voc-classes)")
    return problems[:5]


def _looks_whole_json(path) -> bool:
    """Opens with { and closes with } (a file cut short does not): checked without parsing
    hundreds of megabytes."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
        f.seek(max(0, os.path.getsize(path) - 64))
        tail = f.read().rstrip()
    return head.startswith(b"{") and tail.endswith(b"}")


def dataset_problems(names) -> list:
    """What keeps the data sets `names` from being used: unregistered names and files missing
    where their metadata says (detectron2 would fail later, with a traceback, and for its
    builtin sets without naming DETECTRON2_DATASETS). One message per problem."""
    registered, problems = set(DatasetCatalog.list()), []
    for name in names:
        if name not in registered:
            problems.append(f"data set {name!r} is not registered: register it with "
                            "--register-coco / --register-voc / --register-semseg (a pipeline: "
                            "datasets:), or use one of detectron2's builtin names "
                            "(coco_2017_train, voc_2007_test, ...)")
            continue
        metadata = MetadataCatalog.get(name)
        split = metadata.get("split", None)
        if metadata.get("evaluator_type", None) == "pascal_voc" and split and metadata.get(
                "dirname", None) and os.path.isdir(metadata.dirname):
            listing = os.path.join(metadata.dirname, "ImageSets", "Main", f"{split}.txt")
            if not os.path.isfile(listing):
                problems.append(f"data set {name}: its image list {listing} does not exist "
                                f"(PASCAL VOC's layout: ImageSets/Main/{split}.txt)")
                continue
            problems += _voc_annotation_problems(name, metadata, listing)
        json_file = metadata.get("json_file", None)
        if json_file and os.path.isfile(json_file) and not _looks_whole_json(json_file):
            problems.append(f"data set {name}: {json_file} is not a whole JSON object (cut short "
                            "or not JSON): download or write it again")
        for key in ("json_file", "image_root", "dirname", "sem_seg_root"):
            path = metadata.get(key, None)
            if path and not os.path.exists(path):
                root = os.getenv("DETECTRON2_DATASETS")
                problems.append(
                    f"data set {name}: {path} does not exist. detectron2 finds its builtin data "
                    "sets under $DETECTRON2_DATASETS ("
                    + (f"now {root}" if root else "unset, so ./datasets") + "), in its layout: "
                    "coco/annotations/instances_{train,val}2017.json with coco/{train,val}2017/, "
                    "VOC2007/ and VOC2012/ with Annotations/, JPEGImages/, ImageSets/. Set the "
                    "variable, or register the data set from the command line.")
                break
    return problems


def check_datasets(names) -> None:
    """Raise a ConfigError naming the first problem of dataset_problems(names), before any work
    starts."""
    problems = dataset_problems(names)
    if problems:
        raise ConfigError(problems[0])


#: What a mapper raises for an image it cannot use: not decodable (truncated, empty, not an
#: image), too large, or of another size than its annotation says (detectron2's read_image
#: applies the EXIF orientation, so a rotated photo annotated unrotated lands here)
UNUSABLE_IMAGE = (OSError, Image.DecompressionBombError, utils.SizeMismatchError)


class SkipUnreadableImages(torch.utils.data.Dataset):
    """The training set, mapped by `mapper`. An image that cannot be used (UNUSABLE_IMAGE) is
    skipped with a warning naming it, listed in OUTPUT_DIR/bad_images.txt, and the next image
    of the set is mapped in its place (detectron2's own retry, MapDataset's, fails on Python
    >= 3.11). DATALOADER.BAD_IMAGES error stops at the first one instead."""

    def __init__(self, dataset, mapper, policy: str, report_dir: str):
        self.dataset, self.mapper = dataset, mapper
        self.bad = BadImages(policy, report_dir, key="DATALOADER.BAD_IMAGES")

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        for offset in range(len(self.dataset)):
            dataset_dict = self.dataset[(index + offset) % len(self.dataset)]
            try:
                mapped = self.mapper(dataset_dict)
            except UNUSABLE_IMAGE as e:
                self.bad.unreadable(dataset_dict.get("file_name", "?"), e)
                continue
            if mapped is not None:  # a mapper may also decline an image (e.g. no boxes left)
                return mapped
        raise DatasetError("no image of the training set can be used; see the warnings above")


class StopAtUnusableImage:
    """A test set's mapper: an image it cannot use stops the evaluation with one line naming
    the file (a metric over fewer images than the set has would not compare with others)."""

    def __init__(self, mapper):
        self.mapper = mapper

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except UNUSABLE_IMAGE as e:
            name = printable_path(str(dataset_dict.get("file_name", "?")))
            raise DatasetError(f"test image {name} cannot be evaluated ({type(e).__name__}: "
                               f"{str(e)[:200]}). Every test image is needed for the metrics to "
                               "compare: replace the file, fix its annotation, or take it out "
                               "of the test set.") from None


class RandomScale(T.Augmentation):
    """Resize by a factor drawn uniformly from [min_scale, max_scale] (the image's own size
    times the factor; detectron2's ResizeScale instead fits the image into a scaled target
    box). Labels are resized with nearest neighbours."""

    def __init__(self, min_scale: float, max_scale: float):
        super().__init__()
        self.min_scale, self.max_scale = min_scale, max_scale

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = np.random.uniform(self.min_scale, self.max_scale)
        return T.ResizeTransform(h, w, max(1, round(h * scale)), max(1, round(w * scale)))


class CropWithPad(T.Augmentation):
    """A random crop of `size` (h, w); an image smaller than that is padded at the bottom and
    right, the image with `pad_value` and the label with `ignore_value` (detectron2's
    FixedSizeCrop pads the label with 0, which is a class)."""

    def __init__(self, size, pad_value: float, ignore_value: int):
        super().__init__()
        self.size, self.pad_value, self.ignore_value = tuple(size), pad_value, ignore_value

    def get_transform(self, image):
        (h, w), (ch, cw) = image.shape[:2], self.size
        top, left = np.random.randint(0, max(h - ch, 0) + 1), np.random.randint(0, max(w - cw, 0) + 1)
        crop_h, crop_w = min(ch, h), min(cw, w)
        return T.TransformList([
            T.CropTransform(left, top, crop_w, crop_h),
            T.PadTransform(0, 0, cw - crop_w, ch - crop_h, crop_w, crop_h,
                           pad_value=self.pad_value, seg_pad_value=self.ignore_value)])


def semseg_train_augmentations(cfg) -> list:
    """Scale (INPUT.RANDOM_SCALE (min, max), ours; without it detectron2's shortest-edge resize
    from INPUT.MIN_SIZE_TRAIN), flip, then crop to INPUT.CROP.SIZE with padding (if
    INPUT.CROP.ENABLED): MoCo's VOC protocol is scale 0.5-2.0, crop 513, flip."""
    scale = cfg.INPUT.get("RANDOM_SCALE", ())  # ours: absent from a plain detectron2 config
    augmentations = [RandomScale(*scale) if scale else T.ResizeShortestEdge(
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augmentations.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                          vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if cfg.INPUT.CROP.ENABLED:  # last: the padding is always at the bottom and right
        if cfg.INPUT.CROP.TYPE != "absolute":
            raise ConfigError(f"semantic segmentation crops a fixed size: INPUT.CROP.TYPE "
                              f"absolute, not {cfg.INPUT.CROP.TYPE!r}")
        augmentations.append(CropWithPad(cfg.INPUT.CROP.SIZE, round(float(np.mean(
            cfg.MODEL.PIXEL_MEAN))), cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE))
    return augmentations


class SemSegDatasetMapper(DatasetMapper):
    """DatasetMapper for semantic segmentation: training images are scaled, then cropped
    (semseg_train_augmentations; detectron2's mapper would crop before resizing, so with VOC's
    small images the crop never happens), and label PNGs are read as stored: detectron2's mapper
    converts them with PIL's convert("L"), which turns palette PNGs (VOC's SegmentationClass)
    into grey levels instead of class indices."""

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        args = super().from_config(cfg, is_train)
        if is_train:
            args["augmentations"] = semseg_train_augmentations(cfg)
        return args

    def __call__(self, dataset_dict):
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        label = np.asarray(Image.open(d.pop("sem_seg_file_name")), dtype=np.uint8)
        aug = T.AugInput(image, sem_seg=label)
        self.augmentations(aug)
        d["image"] = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1)))
        if self.is_train:
            d["sem_seg"] = torch.as_tensor(aug.sem_seg.astype("long"))
        return d
