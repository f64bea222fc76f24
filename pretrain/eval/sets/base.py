"""The contract of a downstream classification set read in its official download layout.

A set (`DownstreamSet`, registered by name with `@register_set`) knows the files its root must
hold (`required`), reads its samples for a split and a protocol (`samples`: a `Samples` of
(source, label) pairs, labels 0..classes-1), opens one as an RGB image, and carries what the
protocols need: its class count in the official release (`classes`), InfoCL's per-set
statistics and head width (data_statistics.py) and the metric of the many-shot protocol.

Every problem with a root is a `DatasetError` of one line naming the set, the root, the file and
what was expected: a missing file, a split naming an image that is not there, a label outside the
classes, a .mat or pickle that is not what it claims, a class count other than the release's.
"""

import gzip
import os
import pickle
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ssl2det.errors import DatasetError

SETS = {}

#: the splits a protocol asks for: fit ("train"), choose the regularisation ("val"), refit
#: ("trainval"), measure ("test")
SPLITS = ("train", "val", "trainval", "test")


def register_set(cls):
    SETS[cls.name] = cls()
    return cls


@dataclass
class Samples:
    """(source, label) pairs of one split: a source is a path, or an index into `arrays`
    (sets released as arrays: MNIST, CIFAR, STL-10), with an optional crop box per sample."""

    sources: list
    labels: list
    arrays: np.ndarray = None  # N x H x W (grey) or N x H x W x 3, uint8
    boxes: list = field(default_factory=list)

    def __len__(self):
        return len(self.labels)

    def open(self, i: int) -> Image.Image:
        if self.arrays is not None:
            array = self.arrays[self.sources[i]]
            image = Image.fromarray(array, mode="L" if array.ndim == 2 else "RGB")
        else:
            with Image.open(self.sources[i]) as f:
                image = f.convert("RGB")
        return image.crop(self.boxes[i]) if self.boxes else image.convert("RGB")

    def subset(self, indices) -> "Samples":
        return Samples([self.sources[i] for i in indices], [self.labels[i] for i in indices],
                       self.arrays, [self.boxes[i] for i in indices] if self.boxes else [])


class DownstreamSet:
    """One set (the module docstring). `name` is what --dataset and the run file say."""

    name = ""
    title = ""  # as its authors name it
    classes = 0  # in the official release
    layout = ""  # what its root holds, for --help and the errors
    #: InfoCL's data_statistics.py: (mean, std) and the width of its head (get_data_nclass);
    #: None where InfoCL does not use the set
    infocl_stats = None
    infocl_outputs = 0
    #: the many-shot protocol's metric (Kornblith et al. 2019): "top1", "mean_per_class", "map11"
    metric = "top1"
    multilabel = False

    def required(self) -> list:
        """Paths under the root the layout must have."""
        return []

    def samples(self, root: str, split: str, protocol: str, expected_classes: int = 0) -> Samples:
        """The samples of `split` ("train", "val", "trainval", "test") as `protocol` draws
        them, checked: files there, labels within the classes, the release's class count
        (`expected_classes` when a subset is meant)."""
        self.check_root(root)
        samples = self.read(root, split, protocol)
        self.check(root, samples, expected_classes or self.classes)
        return samples

    def read(self, root: str, split: str, protocol: str) -> Samples:
        raise NotImplementedError

    def fail(self, root: str, what: str) -> DatasetError:
        return DatasetError(f"{self.title} at {root}: {what} (its layout: {self.layout})")

    def check_root(self, root: str):
        if not os.path.isdir(root):
            raise self.fail(root, "not a folder")
        for path in self.required():
            if not os.path.exists(os.path.join(root, path)):
                raise self.fail(root, f"{path} is missing")

    def check(self, root: str, samples: Samples, classes: int):
        if not len(samples):
            raise self.fail(root, "the split holds no image")
        labels = np.asarray(samples.labels)
        flat = labels.reshape(len(labels), -1)
        if flat.min() < (-1 if self.multilabel else 0) or flat.max() >= classes:
            bad = flat.max() if flat.max() >= classes else flat.min()
            raise self.fail(root, f"a label {bad} outside the {classes} classes 0..{classes - 1}")
        found = flat.shape[1] if self.multilabel else len(np.unique(labels))
        if found != classes:
            raise self.fail(root, f"{found} classes, where {self.title} has {classes}: a partial "
                                  "copy? (say `classes: N` in the run file, --classes N, if a "
                                  "subset is meant)")
        if samples.arrays is None:
            missing = next((s for s in samples.sources if not os.path.isfile(s)), None)
            if missing:
                raise self.fail(root, f"the split names {missing}, which is not there")


# --- readers of the release formats -----------------------------------------------------------

def read_lines(set_, root: str, relative: str) -> list:
    """The non-empty lines of a text file of the release."""
    try:
        with open(os.path.join(root, relative), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise set_.fail(root, f"{relative} cannot be read ({e.__class__.__name__})") from None


def read_mat(set_, root: str, relative: str) -> dict:
    """A MATLAB file of the release (scipy reads it as data; it runs nothing)."""
    from scipy.io import loadmat

    try:
        return loadmat(os.path.join(root, relative))
    except Exception as e:  # noqa: BLE001 (scipy raises ValueError, TypeError, ... for non-.mat)
        raise set_.fail(root, f"{relative} is not a MATLAB .mat file scipy can read "
                              f"({str(e)[:80]})") from None


def read_idx(set_, root: str, names: tuple) -> np.ndarray:
    """An idx file (MNIST's format) as an array: the first of `names` that is there, gzipped
    or not, in the root or in torchvision's `NAME/raw/` beside it."""
    for name in names:
        for candidate in (name, name + ".gz"):
            path = os.path.join(root, candidate)
            if os.path.isfile(path):
                opener = gzip.open if candidate.endswith(".gz") else open
                try:
                    with opener(path, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise set_.fail(root, f"{candidate} cannot be read ({e})") from None
                magic = int.from_bytes(data[:4], "big")
                dims = magic & 0xFF
                if magic >> 8 != 0x08 or not 1 <= dims <= 3:  # unsigned bytes, 1-3 dimensions
                    raise set_.fail(root, f"{candidate} is not an idx file of bytes")
                shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
                body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
                if body.size != int(np.prod(shape)):
                    raise set_.fail(root, f"{candidate} holds {body.size} bytes, its header says "
                                          f"{int(np.prod(shape))}: cut short?")
                return body.reshape(shape)
    raise set_.fail(root, f"{names[0]}(.gz) is missing")


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python release without running code: a pickle may build dicts, lists, bytes and
    numpy arrays, nothing else (a plain pickle.load runs whatever the file names)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # (how Python 3 writes bytes at protocol 2: a pure function)

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never does")


def read_cifar_batch(set_, root: str, relative: str) -> dict:
    try:
        with open(os.path.join(root, relative), "rb") as f:
            data = _ArraysOnly(f, encoding="bytes").load()
    except FileNotFoundError:
        raise set_.fail(root, f"{relative} is missing") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise set_.fail(root, f"{relative} is not a CIFAR batch ({str(e)[:120]})") from None
    if not isinstance(data, dict) or b"data" not in data:
        raise set_.fail(root, f"{relative} is not a CIFAR batch (no data array)")
    return data


def per_class_split(groups: list, train: bool, seed: int = 42) -> tuple:
    """InfoCL's 80/20 split of each class (vgg_flower.py, traffic_sign.py): one
    RandomState(seed) shuffles the classes' members one class after another, in `groups`'
    order; the first int(0.8 n) are training. Returns (members, labels)."""
    rs = np.random.RandomState(seed)
    members, labels = [], []
    for label, paths in groups:
        order = np.arange(len(paths))
        rs.shuffle(order)
        chosen = [paths[i] for i in order]
        cut = int(0.8 * len(chosen))
        chosen = chosen[:cut] if train else chosen[cut:]
        members += chosen
        labels += [label] * len(chosen)
    return members, labels


def with_held_out_val(samples_of, split: str, protocol: str) -> Samples:
    """`split` of a set that has only a training and a test split (`samples_of("train")`,
    `samples_of("test")`): infocl trains on all of train; the many-shot protocol holds a
    validation split out of it (train / val), refitting on all of it (trainval)."""
    if split == "test":
        return samples_of("test")
    train = samples_of("train")
    if protocol == "infocl" or split == "trainval":
        return train
    fit, val = held_out_val(train)
    return fit if split == "train" else val


def held_out_val(samples: Samples, seed: int = 0, share: float = 0.2) -> tuple:
    """(train, val) of a set without a validation split of its own: a random `share` of the
    training samples, per class (ours, for choosing the regularisation)."""
    rs = np.random.RandomState(seed)
    labels = np.asarray(samples.labels)
    keys = labels.reshape(len(labels), -1)[:, 0] if labels.ndim > 1 else labels
    val = []
    for label in np.unique(keys):
        members = np.flatnonzero(keys == label)
        rs.shuffle(members)
        val += members[:max(1, int(round(share * len(members))))].tolist()
    held = set(val)
    return (samples.subset([i for i in range(len(samples)) if i not in held]),
            samples.subset(sorted(val)))
