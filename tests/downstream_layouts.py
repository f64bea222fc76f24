"""Downstream sets in their official download layouts, made from real images (the shipped
CIFAR-10 sample's JPEGs, ../shared/data's too), with the label and split files written as the
releases lay them out; `classes` classes of `per_class` images each, so tests give the readers
`classes` as the count a subset is meant to have."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO

CIFAR = REPO / "datasets" / "cifar10_tiny" / "train"


def images(classes: int, per_class: int) -> list:
    """[(class index, PIL image)]: the first `per_class` images (at most 70: its training
    images, then its test images) of the first `classes` classes of the shipped CIFAR-10 sample
    (32 x 32 JPEGs)."""
    names = sorted(p.name for p in CIFAR.iterdir())[:classes]
    found = []
    for c, name in enumerate(names):
        paths = sorted((CIFAR / name).iterdir()) + sorted((CIFAR.parent / "test" / name).iterdir())
        for path in paths[:per_class]:
            with Image.open(path) as f:
                found.append((c, f.convert("RGB")))
    return found


def image_folder(root: Path, classes=3, per_class=8, test_share=0.25) -> Path:
    """The same images as ROOT/{train,test}/<class>/<n>.jpg: the last quarter of each class
    tests."""
    by_class = {}
    for c, image in images(classes, per_class):
        by_class.setdefault(c, []).append(image)
    for c, members in by_class.items():
        cut = int(len(members) * (1 - test_share))
        for split, part in (("train", members[:cut]), ("test", members[cut:])):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(part):
                image.save(root / split / f"class{c}" / f"{i}.jpg", quality=95)
    return root


def dtd(root: Path, classes=3, per_class=8) -> Path:
    """images/<class>/<class>_NNNN.jpg; labels/{train,val,test}1.txt: half, a quarter, a quarter
    of each class (the release: 40 a class each)."""
    lines = {"train": [], "val": [], "test": []}
    for c, members in _grouped(images(classes, per_class)).items():
        name = ["banded", "blotchy", "braided", "bubbly", "bumpy"][c]
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(members):
            relative = f"{name}/{name}_{i:04d}.jpg"
            image.save(root / "images" / relative, quality=95)
            split = "train" if i < per_class // 2 else "val" if i < 3 * per_class // 4 else "test"
            lines[split].append(relative)
    (root / "labels").mkdir()
    for split, rows in lines.items():
        (root / "labels" / f"{split}1.txt").write_text("\n".join(rows) + "\n")
    return root


def flowers(root: Path, classes=3, per_class=10) -> Path:
    """jpg/image_NNNNN.jpg numbered in an interleaved class order (as the release's are not
    grouped by class), imagelabels.mat (1-based labels), setid.mat (trnid/valid/tstid)."""
    from scipy.io import savemat

    members = _grouped(images(classes, per_class))
    order = [(c, members[c][i]) for i in range(per_class) for c in sorted(members, reverse=True)]
    (root / "jpg").mkdir(parents=True)
    labels = []
    for n, (c, image) in enumerate(order, 1):
        image.save(root / "jpg" / f"image_{n:05d}.jpg", quality=95)
        labels.append(c + 1)
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    ids = np.arange(1, len(order) + 1)
    within = (ids - 1) // classes % 3  # each class's images, in turn training, val, test
    savemat(root / "setid.mat", {"trnid": ids[within == 0][None], "valid": ids[within == 1][None],
                                 "tstid": ids[within == 2][None]})
    return root


def cub(root: Path, classes=3, per_class=6) -> Path:
    """images.txt, image_class_labels.txt, train_test_split.txt, images/NNN.Name/<file>.jpg."""
    rows, labels, splits = [], [], []
    for n, (c, image) in enumerate(images(classes, per_class), 1):
        relative = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{n:04d}.jpg"
        (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / relative, quality=95)
        rows.append(f"{n} {relative}")
        labels.append(f"{n} {c + 1}")
        splits.append(f"{n} {int(n % 2 == 1)}")
    for name, lines in (("images.txt", rows), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", splits)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def aircraft(root: Path, classes=3, per_class=8) -> Path:
    """data/images/<7-digit id>.jpg, data/images_variant_{train,val,trainval,test}.txt,
    data/images_box.txt (xmin ymin xmax ymax)."""
    (root / "data" / "images").mkdir(parents=True)
    variants = ["A330-200", "707-320", "Cessna 172", "DC-3"][:classes]
    split_rows = {"train": [], "val": [], "test": []}
    boxes = []
    for n, (c, image) in enumerate(images(classes, per_class)):
        name = f"{1000000 + n * 37:07d}"
        image.save(root / "data" / "images" / f"{name}.jpg", quality=95)
        split = ("train", "val", "test", "test")[n % 4]
        split_rows[split].append(f"{name} {variants[c]}")
        boxes.append(f"{name} 2 3 29 27")
    split_rows["trainval"] = split_rows["train"] + split_rows["val"]
    for split, rows in split_rows.items():
        (root / "data" / f"images_variant_{split}.txt").write_text("\n".join(rows) + "\n")
    (root / "data" / "images_box.txt").write_text("\n".join(boxes) + "\n")
    return root


def gtsrb(root: Path, classes=3, per_class=10) -> Path:
    """Final_Training/Images/000NN/000NN_NNNNN.ppm."""
    for n, (c, image) in enumerate(images(classes, per_class)):
        folder = root / "Final_Training" / "Images" / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{n // 3:05d}_{n % 3:05d}.ppm")
    return root


def mnist(root: Path, classes=3, per_class=8, gz=True) -> Path:
    """The four idx files, gzipped as downloaded: the images made grey."""
    grey = [(c, np.asarray(image.convert("L").resize((28, 28)))) for c, image in
            images(classes, per_class)]
    root.mkdir(parents=True, exist_ok=True)
    for prefix, part in (("train", grey[0::2]), ("t10k", grey[1::2])):
        _idx(root / f"{prefix}-images-idx3-ubyte", np.stack([a for _, a in part]), gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", np.array([c for c, _ in part], np.uint8), gz)
    return root


def _idx(path: Path, array: np.ndarray, gz: bool):
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def cifar100(root: Path, classes=3, per_class=8) -> Path:
    """train, test, meta: pickled dicts with bytes keys and a uint8 data array, as the python
    release (fine_labels)."""
    found = images(classes, per_class)
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", found[0::2]), ("test", found[1::2])):
        data = np.stack([np.asarray(image).transpose(2, 0, 1).reshape(-1) for _, image in part])
        with open(root / name, "wb") as f:
            pickle.dump({b"filenames": [b"x.png"] * len(part), b"data": data,
                         b"fine_labels": [c for c, _ in part],
                         b"coarse_labels": [0] * len(part)}, f, protocol=2)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{c}".encode() for c in range(classes)]}, f)
    return root


def stl10(root: Path, classes=3, per_class=8) -> Path:
    """train_X.bin, train_y.bin, test_X.bin, test_y.bin: 96 px images, column-major, labels
    1-based."""
    found = images(classes, per_class)
    root.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", found[0::2]), ("test", found[1::2])):
        arrays = [np.asarray(image.resize((96, 96))) for _, image in part]  # H x W x 3
        (root / f"{name}_X.bin").write_bytes(
            np.stack([a.transpose(2, 1, 0) for a in arrays]).tobytes())
        (root / f"{name}_y.bin").write_bytes(np.array([c + 1 for c, _ in part], np.uint8).tobytes())
    return root


def _grouped(found) -> dict:
    by_class = {}
    for c, image in found:
        by_class.setdefault(c, []).append(image)
    return by_class


def food101(root: Path, classes=3, per_class=8) -> Path:
    """images/<class>/<id>.jpg, meta/{train,test}.txt ("class/id"), meta/classes.txt."""
    names = ["apple_pie", "baby_back_ribs", "baklava"][:classes]
    rows = {"train": [], "test": []}
    for n, (c, image) in enumerate(images(classes, per_class)):
        (root / "images" / names[c]).mkdir(parents=True, exist_ok=True)
        image.save(root / "images" / names[c] / f"{100000 + n}.jpg", quality=95)
        rows["train" if n % 4 else "test"].append(f"{names[c]}/{100000 + n}")
    (root / "meta").mkdir()
    (root / "meta" / "classes.txt").write_text("\n".join(names) + "\n")
    for split, lines in rows.items():
        (root / "meta" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def sun397(root: Path, classes=3, per_class=8) -> Path:
    """<l>/<class>/sun_<id>.jpg, ClassName.txt ("/a/abbey"), Training_01.txt, Testing_01.txt."""
    names = ["/a/abbey", "/a/airplane_cabin", "/b/badlands"][:classes]
    rows = {"Training": [], "Testing": []}
    for n, (c, image) in enumerate(images(classes, per_class)):
        relative = f"{names[c]}/sun_{n:06d}.jpg"
        (root / relative.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relative.lstrip("/"), quality=95)
        rows["Training" if n % 2 else "Testing"].append(relative)
    (root / "ClassName.txt").write_text("\n".join(names) + "\n")
    for split, lines in rows.items():
        (root / f"{split}_01.txt").write_text("\n".join(lines) + "\n")
    return root


def cars(root: Path, classes=3, per_class=8) -> Path:
    """cars_train/, cars_test/, devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat:
    struct arrays 'annotations' with fname and class (1-based), as the release's."""
    from scipy.io import savemat

    rows = {"train": [], "test": []}
    for n, (c, image) in enumerate(images(classes, per_class)):
        split = "train" if n % 2 else "test"
        (root / f"cars_{split}").mkdir(parents=True, exist_ok=True)
        image.save(root / f"cars_{split}" / f"{n:05d}.jpg", quality=95)
        rows[split].append((f"{n:05d}.jpg", c + 1))
    (root / "devkit").mkdir()
    for split, path in (("train", root / "devkit" / "cars_train_annos.mat"),
                        ("test", root / "cars_test_annos_withlabels.mat")):
        table = np.array([(f, np.array([[c]], np.uint8)) for f, c in rows[split]],
                         dtype=[("fname", object), ("class", object)])
        savemat(path, {"annotations": table[None]})
    return root


def pets(root: Path, classes=3, per_class=8) -> Path:
    """images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt ("Name CLASS SPECIES BREED")."""
    breeds = ["Abyssinian", "american_bulldog", "Bengal"][:classes]
    rows = {"trainval": ["#Image CLASS-ID SPECIES BREED ID"], "test": []}
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for n, (c, image) in enumerate(images(classes, per_class)):
        name = f"{breeds[c]}_{n}"
        image.save(root / "images" / f"{name}.jpg", quality=95)
        rows["trainval" if n % 4 else "test"].append(f"{name} {c + 1} 1 {c + 1}")
    for split, lines in rows.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def caltech101(root: Path, classes=3, per_class=34) -> Path:
    """101_ObjectCategories/<class>/image_NNNN.jpg."""
    names = ["BACKGROUND_Google", "Faces", "accordion"][:classes]
    for n, (c, image) in enumerate(images(classes, per_class)):
        folder = root / "101_ObjectCategories" / names[c]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"image_{n:04d}.jpg", quality=95)
    return root


def voc2007(root: Path, per_class=4) -> Path:
    """JPEGImages/<id>.jpg, ImageSets/Main/<class>_{train,val,trainval,test}.txt ("ID 1|-1|0"):
    every image holds its own class, the next class marked difficult."""
    from pretrain.eval.sets.arrays import VOC_CLASSES

    found = images(10, per_class)  # ten CIFAR classes, each image one of 20 VOC classes
    (root / "JPEGImages").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    ids = {"train": [], "val": [], "test": []}
    labels = {}
    for n, (c, image) in enumerate(found):
        ident = f"{n:06d}"
        image.save(root / "JPEGImages" / f"{ident}.jpg", quality=95)
        present = (2 * c + n % 2) % 20
        labels[ident] = (present, (present + 1) % 20)
        ids[("train", "val", "test", "test")[n % 4]].append(ident)
    ids["trainval"] = ids["train"] + ids["val"]
    for split, members in ids.items():
        for k, name in enumerate(VOC_CLASSES):
            lines = [f"{i} {1 if labels[i][0] == k else 0 if labels[i][1] == k else -1}"
                     for i in members]
            path = root / "ImageSets" / "Main" / f"{name}_{split}.txt"
            path.write_text("\n".join(lines) + "\n")
    return root


def cifar10(root: Path, classes=3, per_class=12) -> Path:
    """data_batch_1..5, test_batch: pickled dicts with bytes keys (labels), as the python
    release."""
    found = images(classes, per_class)
    root.mkdir(parents=True, exist_ok=True)
    parts = [found[i::6] for i in range(6)]
    for name, part in zip([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], parts):
        data = np.stack([np.asarray(image).transpose(2, 0, 1).reshape(-1) for _, image in part])
        with open(root / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": [c for c, _ in part]}, f, protocol=2)
    return root
