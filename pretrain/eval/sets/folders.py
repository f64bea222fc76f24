"""Sets released as image files with split lists: DTD, Oxford Flowers 102, CUB-200-2011,
FGVC-Aircraft, Stanford Cars, Oxford-IIIT Pets, Food-101, SUN397, Caltech-101.

Splits per protocol. `infocl` is the authors' transfer_datasets/*.py, line by line: DTD split 1
train+val / test; Flowers an 80/20 split of each class drawn with RandomState(42); CUB the official
train/test; Aircraft the variants' trainval / test, each image cropped to its bounding box.
`kornblith` (the many-shot protocol) trains on the official train split, chooses the
regularisation on the official val split where the set has one (else a held-out 20% of train,
ours), refits on train+val, tests on test.
"""

import os
from collections import defaultdict

import numpy as np

from .base import (DownstreamSet, Samples, per_class_split, read_lines, read_mat, register_set,
                   with_held_out_val)


@register_set
class DTD(DownstreamSet):
    name, title, classes = "dtd", "DTD", 47
    layout = "images/<class>/<image>.jpg, labels/{train,val,test}N.txt (split 1 used)"
    infocl_stats, infocl_outputs = ((0.533, 0.474, 0.426), (0.261, 0.250, 0.259)), 47

    def required(self):
        return ["images"] + [f"labels/{s}1.txt" for s in ("train", "val", "test")]

    def read(self, root, split, protocol):
        # InfoCL trains on train1 + val1 (dtd.py: load_images)
        lists = {"train": ["train1", "val1"] if protocol == "infocl" else ["train1"],
                 "val": ["val1"], "trainval": ["train1", "val1"], "test": ["test1"]}[split]
        every = {s: read_lines(self, root, f"labels/{s}1.txt") for s in ("train", "val", "test")}
        # (InfoCL sorts the categories of each split's own lines; of all three, they are the
        # same 47 in the release, and stay the same on a split that lacks one)
        categories = sorted({line.split("/")[0] for lines in every.values() for line in lines})
        lines = [line for name in lists for line in every[name[:-1]]]
        return Samples([os.path.join(root, "images", line) for line in lines],
                       [categories.index(line.split("/")[0]) for line in lines])


@register_set
class Flowers(DownstreamSet):
    name, title, classes = "flowers", "Oxford Flowers 102", 102
    layout = "jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat"
    infocl_stats, infocl_outputs = ((0.518, 0.410, 0.329), (0.296, 0.249, 0.285)), 102
    metric = "mean_per_class"

    def required(self):
        return ["jpg", "imagelabels.mat", "setid.mat"]

    def read(self, root, split, protocol):
        labels = self._array(root, "imagelabels.mat", "labels")
        path = lambda i: os.path.join(root, "jpg", f"image_{i:05d}.jpg")  # noqa: E731
        if protocol == "infocl":
            # vgg_flower.py: the classes in the order they first appear in imagelabels.mat (a
            # dict's insertion order), each class's images in number order
            groups = defaultdict(list)
            for i, label in enumerate(labels, 1):
                groups[int(label)].append(path(i))
            members, classes = per_class_split(list(groups.items()), split != "test")
            return Samples(members, [c - 1 for c in classes])
        ids = {"train": ["trnid"], "val": ["valid"], "trainval": ["trnid", "valid"],
               "test": ["tstid"]}[split]
        chosen = [int(i) for key in ids for i in self._array(root, "setid.mat", key)]
        if any(not 1 <= i <= len(labels) for i in chosen):
            raise self.fail(root, f"setid.mat names image numbers outside 1..{len(labels)}")
        return Samples([path(i) for i in chosen], [int(labels[i - 1]) - 1 for i in chosen])

    def _array(self, root, mat, key):
        data = read_mat(self, root, mat)
        if key not in data:
            raise self.fail(root, f"{mat} holds no '{key}' (it holds "
                                  f"{', '.join(k for k in data if not k.startswith('__'))})")
        return np.asarray(data[key]).ravel()


@register_set
class CUB(DownstreamSet):
    name, title, classes = "cub", "CUB-200-2011", 200
    layout = "images.txt, image_class_labels.txt, train_test_split.txt, images/<class>/<image>.jpg"
    infocl_stats, infocl_outputs = ((0.483, 0.491, 0.424), (0.228, 0.224, 0.259)), 200

    def required(self):
        return ["images.txt", "image_class_labels.txt", "train_test_split.txt", "images"]

    def read(self, root, split, protocol):
        def table(name):
            rows = [line.split(" ", 1) for line in read_lines(self, root, name)]
            if any(len(row) != 2 for row in rows):
                raise self.fail(root, f"{name} has a line that is not 'ID VALUE'")
            return dict(rows)
        images, labels, is_train = (table(n) for n in (
            "images.txt", "image_class_labels.txt", "train_test_split.txt"))

        def samples_of(which):
            wanted = "1" if which == "train" else "0"
            ids = [i for i in images if is_train.get(i) == wanted]  # images.txt's order
            try:
                return Samples([os.path.join(root, "images", images[i]) for i in ids],
                               [int(labels[i]) - 1 for i in ids])
            except (KeyError, ValueError):
                raise self.fail(root, "image_class_labels.txt lacks an image or has a label "
                                      "that is not a number") from None
        return with_held_out_val(samples_of, split, protocol)


@register_set
class Aircraft(DownstreamSet):
    name, title, classes = "aircraft", "FGVC-Aircraft", 100
    layout = ("data/images/<id>.jpg, data/images_variant_{train,val,trainval,test}.txt, "
              "data/images_box.txt")
    # InfoCL's head has 102 outputs for its 100 variants (data_statistics.py get_data_nclass)
    infocl_stats, infocl_outputs = ((0.486, 0.507, 0.525), (0.266, 0.260, 0.276)), 102
    metric = "mean_per_class"

    def required(self):
        return ["data/images", "data/images_box.txt"] + [
            f"data/images_variant_{s}.txt" for s in ("train", "val", "trainval", "test")]

    def read(self, root, split, protocol):
        which = "trainval" if protocol == "infocl" and split == "train" else split
        # every split's variants, so that train and test number them alike (aircraft.py sorts
        # the variants of the split it reads; the release's splits have all 100)
        variants = sorted({line.split(" ", 1)[1] for s in ("trainval", "test")
                           for line in read_lines(self, root, f"data/images_variant_{s}.txt")})
        names = defaultdict(list)
        for line in read_lines(self, root, f"data/images_variant_{which}.txt"):
            name, variant = line.split(" ", 1)
            names[variant].append(name)
        ordered = [(variants.index(v), sorted(names[v])) for v in sorted(names)]
        files = [n for _, members in ordered for n in members]
        labels = [label for label, members in ordered for _ in members]
        boxes = []
        if protocol == "infocl":  # aircraft.py crops every image to its box
            box = {}
            for line in read_lines(self, root, "data/images_box.txt"):
                parts = line.split()
                box[parts[0]] = tuple(int(v) for v in parts[1:5])
            missing = next((n for n in files if n not in box), None)
            if missing:
                raise self.fail(root, f"data/images_box.txt has no box for image {missing}")
            boxes = [box[n] for n in files]
        return Samples([os.path.join(root, "data", "images", f"{n}.jpg") for n in files], labels,
                       boxes=boxes)


@register_set
class Cars(DownstreamSet):
    name, title, classes = "cars", "Stanford Cars", 196
    layout = ("cars_train/, cars_test/, devkit/cars_train_annos.mat, "
              "cars_test_annos_withlabels.mat")

    def required(self):
        return ["cars_train", "cars_test", "devkit/cars_train_annos.mat",
                "cars_test_annos_withlabels.mat"]

    def read(self, root, split, protocol):
        def samples_of(which):
            mat, folder = (("devkit/cars_train_annos.mat", "cars_train") if which == "train"
                           else ("cars_test_annos_withlabels.mat", "cars_test"))
            annotations = read_mat(self, root, mat).get("annotations")
            try:
                rows = annotations[0]
                return Samples([os.path.join(root, folder, str(r["fname"][0])) for r in rows],
                               [int(r["class"][0][0]) - 1 for r in rows])
            except (TypeError, IndexError, KeyError, ValueError):
                raise self.fail(root, f"{mat} has no 'annotations' with fname and class") from None
        return with_held_out_val(samples_of, split, protocol)


@register_set
class Pets(DownstreamSet):
    name, title, classes = "pets", "Oxford-IIIT Pets", 37
    layout = "images/<Breed>_<n>.jpg, annotations/{trainval,test}.txt"
    metric = "mean_per_class"

    def required(self):
        return ["images", "annotations/trainval.txt", "annotations/test.txt"]

    def read(self, root, split, protocol):
        def samples_of(which):
            rows = [line.split() for line in read_lines(
                self, root, f"annotations/{'trainval' if which == 'train' else 'test'}.txt")
                if not line.startswith("#")]
            try:
                return Samples([os.path.join(root, "images", f"{r[0]}.jpg") for r in rows],
                               [int(r[1]) - 1 for r in rows])
            except (IndexError, ValueError):
                raise self.fail(root, "an annotations line is not 'NAME CLASS SPECIES BREED'") \
                    from None
        return with_held_out_val(samples_of, split, protocol)


@register_set
class Food101(DownstreamSet):
    name, title, classes = "food101", "Food-101", 101
    layout = "images/<class>/<id>.jpg, meta/{train,test}.txt, meta/classes.txt"

    def required(self):
        return ["images", "meta/train.txt", "meta/test.txt", "meta/classes.txt"]

    def read(self, root, split, protocol):
        classes = read_lines(self, root, "meta/classes.txt")

        def samples_of(which):
            lines = read_lines(self, root, f"meta/{which}.txt")
            known = set(classes)
            strange = next((line for line in lines if line.split("/")[0] not in known), None)
            if strange:
                raise self.fail(root, f"meta/{which}.txt names {strange}, of no class in "
                                      "meta/classes.txt")
            return Samples([os.path.join(root, "images", f"{line}.jpg") for line in lines],
                           [classes.index(line.split("/")[0]) for line in lines])
        return with_held_out_val(samples_of, split, protocol)


@register_set
class SUN397(DownstreamSet):
    name, title, classes = "sun397", "SUN397", 397
    layout = "<l>/<class>/.../sun_<id>.jpg, ClassName.txt, Training_01.txt, Testing_01.txt"

    def required(self):
        return ["ClassName.txt", "Training_01.txt", "Testing_01.txt"]

    def read(self, root, split, protocol):
        classes = read_lines(self, root, "ClassName.txt")  # "/a/abbey" ...

        def samples_of(which):
            partition = "Training" if which == "train" else "Testing"
            lines = read_lines(self, root, f"{partition}_01.txt")
            labels = [classes.index(line.rsplit("/", 1)[0]) if line.rsplit("/", 1)[0] in classes
                      else -1 for line in lines]
            if -1 in labels:
                raise self.fail(root, f"a partition names {lines[labels.index(-1)]}, of no class "
                                      "in ClassName.txt")
            return Samples([os.path.join(root, line.lstrip("/")) for line in lines], labels)
        return with_held_out_val(samples_of, split, protocol)


@register_set
class Caltech101(DownstreamSet):
    name, title, classes = "caltech101", "Caltech-101", 102
    layout = "101_ObjectCategories/<class>/image_NNNN.jpg (the background class included)"
    metric = "mean_per_class"
    TRAIN_PER_CLASS = 30  # Kornblith et al. 2019: 30 training images a class

    def required(self):
        return ["101_ObjectCategories"]

    def read(self, root, split, protocol):
        base = os.path.join(root, "101_ObjectCategories")
        classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
        rs = np.random.RandomState(0)  # ours: which 30 of each class train
        train, test = Samples([], []), Samples([], [])
        for label, name in enumerate(classes):
            files = sorted(f for f in os.listdir(os.path.join(base, name))
                           if f.lower().endswith(".jpg"))
            order = rs.permutation(len(files))
            for k, i in enumerate(order):
                part = train if k < self.TRAIN_PER_CLASS else test
                part.sources.append(os.path.join(base, name, files[i]))
                part.labels.append(label)
        return with_held_out_val(lambda which: train if which == "train" else test, split,
                                 protocol)


@register_set
class ImageFolderSet(DownstreamSet):
    """Any other set as image folders: the classes are the folder names, sorted."""

    name, title, classes = "imagefolder", "an image folder", 0
    layout = "train/<class>/<image>, test/<class>/<image>, val/<class>/<image> if it has one"

    def required(self):
        return ["train", "test"]

    def samples(self, root, split, protocol, expected_classes=0):
        self.check_root(root)
        found = len([d for d in os.listdir(os.path.join(root, "train"))
                     if os.path.isdir(os.path.join(root, "train", d))])
        samples = self.read(root, split, protocol)
        self.check(root, samples, expected_classes or found)
        return samples

    def read(self, root, split, protocol):
        classes = sorted(d for d in os.listdir(os.path.join(root, "train"))
                         if os.path.isdir(os.path.join(root, "train", d)))

        def samples_of(which):
            sources, labels = [], []
            for label, name in enumerate(classes):
                folder = os.path.join(root, which, name)
                files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
                sources += [os.path.join(folder, f) for f in files]
                labels += [label] * len(files)
            return Samples(sources, labels)
        has_val = os.path.isdir(os.path.join(root, "val")) and any(os.scandir(
            os.path.join(root, "val")))
        if not has_val or protocol == "infocl" or split == "test":
            return with_held_out_val(samples_of, split, protocol)
        parts = [samples_of(w) for w in {"train": ("train",), "val": ("val",),
                                         "trainval": ("train", "val")}[split]]
        return Samples([s for p in parts for s in p.sources], [y for p in parts for y in p.labels])
