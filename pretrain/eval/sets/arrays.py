"""Sets released as arrays or per-class image folders: MNIST and Fashion-MNIST (idx files),
CIFAR-10 and CIFAR-100 (their python releases, read without running code), STL-10 (its binary
release), GTSRB (Final_Training/Images/000NN/*.ppm), VOC2007 classification (multi-label)."""

import os

import numpy as np

from .base import (DownstreamSet, Samples, per_class_split, read_cifar_batch, read_idx,
                   read_lines, register_set, with_held_out_val)


def _pick(train: Samples, test: Samples, split: str, protocol: str) -> Samples:
    return with_held_out_val(lambda which: train if which == "train" else test, split, protocol)


class _IdxSet(DownstreamSet):
    layout = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte (.gz as downloaded, or unpacked)")
    classes = 10

    def read(self, root, split, protocol):
        parts = {}
        for which, prefix in (("train", "train"), ("test", "t10k")):
            images = read_idx(self, root, (f"{prefix}-images-idx3-ubyte",))
            labels = read_idx(self, root, (f"{prefix}-labels-idx1-ubyte",))
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise self.fail(root, f"the {prefix} images ({images.shape}) and labels "
                                      f"({labels.shape}) do not go together")
            parts[which] = Samples(list(range(len(labels))), labels.astype(int).tolist(), images)
        return _pick(parts["train"], parts["test"], split, protocol)


@register_set
class MNIST(_IdxSet):
    name, title = "mnist", "MNIST"
    infocl_stats, infocl_outputs = ((0.170,) * 3, (0.320,) * 3), 10


@register_set
class FashionMNIST(_IdxSet):
    name, title = "fashionmnist", "Fashion-MNIST"
    infocl_stats, infocl_outputs = ((0.348,) * 3, (0.347,) * 3), 10


class _CifarSet(DownstreamSet):
    label_key = b"labels"
    train_files, test_file = (), ""

    def required(self):
        return [*self.train_files, self.test_file]

    def _part(self, root, files):
        batches = [read_cifar_batch(self, root, f) for f in files]
        try:
            data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
            labels = [int(v) for b in batches for v in b[self.label_key]]
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except (KeyError, ValueError, TypeError):
            raise self.fail(root, f"a batch lacks 32x32 RGB data or {self.label_key.decode()}") \
                from None
        if len(images) != len(labels):
            raise self.fail(root, f"{len(images)} images but {len(labels)} labels")
        return Samples(list(range(len(labels))), labels, np.ascontiguousarray(images))

    def read(self, root, split, protocol):
        return _pick(self._part(root, self.train_files),
                         self._part(root, [self.test_file]), split, protocol)


@register_set
class CIFAR10(_CifarSet):
    name, title, classes = "cifar10", "CIFAR-10", 10
    layout = "cifar-10-batches-py: data_batch_1..5, test_batch (the python release)"
    train_files, test_file = tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"
    infocl_stats, infocl_outputs = ((0.5,) * 3, (0.5,) * 3), 10


@register_set
class CIFAR100(_CifarSet):
    name, title, classes = "cifar100", "CIFAR-100", 100
    layout = "cifar-100-python: train, test, meta (the python release)"
    train_files, test_file, label_key = ("train",), "test", b"fine_labels"
    infocl_stats, infocl_outputs = ((0.5,) * 3, (0.5,) * 3), 100


@register_set
class STL10(DownstreamSet):
    name, title, classes = "stl10", "STL-10", 10
    layout = "stl10_binary: train_X.bin, train_y.bin, test_X.bin, test_y.bin (the binary release)"
    infocl_stats, infocl_outputs = ((0.491, 0.482, 0.447), (0.247, 0.244, 0.262)), 10

    def required(self):
        return [f"{s}_{k}.bin" for s in ("train", "test") for k in ("X", "y")]

    def _part(self, root, which):
        raw = np.fromfile(os.path.join(root, f"{which}_X.bin"), dtype=np.uint8)
        labels = np.fromfile(os.path.join(root, f"{which}_y.bin"), dtype=np.uint8)
        if raw.size != labels.size * 3 * 96 * 96:
            raise self.fail(root, f"{which}_X.bin holds {raw.size} bytes, {labels.size} labels "
                                  f"need {labels.size * 3 * 96 * 96}")
        # column-major 3 x 96 x 96 per image (as the release's own reader): to rows of pixels
        images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
        return Samples(list(range(len(labels))), (labels.astype(int) - 1).tolist(),
                       np.ascontiguousarray(images))

    def read(self, root, split, protocol):
        return _pick(self._part(root, "train"), self._part(root, "test"), split,
                         protocol)


@register_set
class GTSRB(DownstreamSet):
    name, title, classes = "gtsrb", "GTSRB (traffic signs)", 43
    layout = "Final_Training/Images/000NN/*.ppm"
    infocl_stats, infocl_outputs = ((0.335, 0.291, 0.295), (0.267, 0.249, 0.251)), 43

    def required(self):
        return ["Final_Training/Images"]

    def read(self, root, split, protocol):
        base = os.path.join(root, "Final_Training", "Images")
        groups = []
        for label in range(self.classes):
            folder = os.path.join(base, f"{label:05d}")
            # sorted: InfoCL's glob returns the directory's own order, which differs between
            # file systems, so its split cannot be reproduced; ours is the same everywhere
            files = sorted(f for f in os.listdir(folder) if f.endswith(".ppm")) \
                if os.path.isdir(folder) else []
            groups.append((label, [os.path.join(folder, f) for f in files]))
        groups = [(label, files) for label, files in groups if files]
        train = Samples(*per_class_split(groups, True))
        test = Samples(*per_class_split(groups, False))
        return _pick(train, test, split, protocol)


VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


@register_set
class VOC2007(DownstreamSet):
    name, title, classes = "voc2007", "PASCAL VOC2007 classification", 20
    layout = "JPEGImages/<id>.jpg, ImageSets/Main/<class>_{train,val,trainval,test}.txt"
    metric, multilabel = "map11", True

    def required(self):
        return ["JPEGImages", "ImageSets/Main"]

    def read(self, root, split, protocol):
        which = "trainval" if protocol == "infocl" and split == "train" else split
        ids, columns = None, []
        for name in VOC_CLASSES:
            rows = [line.split() for line in read_lines(self, root,
                                                        f"ImageSets/Main/{name}_{which}.txt")]
            if ids is None:
                ids = [r[0] for r in rows]
            if [r[0] for r in rows] != ids:
                raise self.fail(root, f"ImageSets/Main/{name}_{which}.txt lists other images "
                                      f"than {VOC_CLASSES[0]}_{which}.txt")
            try:  # 1 present, -1 absent, 0 difficult (left out of the metric: -1 marks it)
                columns.append([{1: 1, -1: 0, 0: -1}[int(r[1])] for r in rows])
            except (IndexError, ValueError, KeyError):
                raise self.fail(root, f"ImageSets/Main/{name}_{which}.txt has a line that is "
                                      "not 'ID 1|-1|0'") from None
        labels = np.asarray(columns, dtype=int).T
        return Samples([os.path.join(root, "JPEGImages", f"{i}.jpg") for i in ids],
                       labels.tolist())
