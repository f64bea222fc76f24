"""Images read from tar files by index: ImageNet's training archive as downloaded and WebDataset
shards (DATA.ROOT, DATA.VAL_ROOT, KNN.TRAIN_ROOT and the probe's roots accept both).

Parallel file systems cap the number of files a user may keep and answer every `open` over the
network, so ImageNet often lives as the 138 GB ILSVRC2012_img_train.tar (1,000 inner tars, one
per class) or as WebDataset shards. Both are read in place: the offset and size of every image
member are found once (Python's tarfile reads the 512-byte headers and seeks over the data), kept
as an index beside the file index (arrays, reused while every tar keeps its size and
modification time), and each image is then one `os.pread` at its offset. pread has no file
position, so forked loader workers never share one; each process opens the tars itself.

The samples are numbered as the same images in a folder would be: classes in sorted order, and
within a class the members sorted as the folder's listing sorts paths (archives), or in shard
order (shards), so a folder, its archive and shards in that order give the same run.

Layouts:
- `X.tar` whose members are per-class tars (`n01440764.tar` holding `n01440764_10026.JPEG`,
  ImageNet's own) or class folders (`n01440764/n01440764_10026.JPEG`);
- WebDataset shards, `KEY.jpg`/`KEY.jpeg`/`KEY.png` with `KEY.cls` (the class index as text),
  given as a brace pattern `DIR/NAME-{000000..000146}.tar`, or one shard `X.tar`.
"""

import hashlib
import json
import logging
import os
import zipfile
from array import array

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from ssl2det.errors import DatasetError
from ssl2det.io import atomic_write

from .tar_files import members, tar_paths

logger = logging.getLogger("pretrain")

VERSION = 2  # 2: the tars' identity has inode and ctime, the arrays a digest
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")  # webdataset's image keys
_INDEX_ARRAYS = ("offsets", "sizes", "labels", "files", "name_ends", "names")


#: the largest class index a shard's .cls may hold (ImageNet-21k has 21,841 classes; ours)
MAX_CLASSES = 100_000


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _by_class_folder(path: str, images: list) -> dict:
    """{class: [entry]} of an archive's images in class folders. The class is the folder level
    below every folder the images share: `tar cf train.tar train` puts them all under train/,
    which is not a class (all labels 0 otherwise). An image at that level has no class."""
    parts = [name.split("/") for name, _, _ in images]
    depth = 0
    # one folder holds them all, and folders below it hold some: that folder is no class
    while parts and all(len(p) > depth + 1 for p in parts) and \
            len({p[depth] for p in parts}) == 1 and any(len(p) > depth + 2 for p in parts):
        depth += 1
    grouped = {}
    for (name, offset, size), split in zip(images, parts):
        if len(split) < depth + 2:
            raise DatasetError(f"{path}: {name} sits beside the class folders, not in one "
                               f"(expected {'/'.join(split[:depth]) + '/' if depth else ''}"
                               "<class>/<image>)")
        inside = "/".join(split[depth + 1:])
        grouped.setdefault(split[depth], []).append(
            (os.path.dirname(inside), os.path.basename(inside), name, offset, size))
    return grouped


class TarIndex:
    """Where each image is: per sample the tar (`files`), data offset and size, label and name
    (the member's path, as one utf-8 blob cut at `name_ends`), in sample order; the classes and
    the members that are not images."""

    def __init__(self, layout, tars, classes, arrays, ignored):
        self.layout, self.tars = layout, list(tars)  # layout: "archive" or "shards"
        self.classes, self.ignored = list(classes), list(ignored)
        for key in _INDEX_ARRAYS:
            setattr(self, key, arrays[key])

    def __len__(self):
        return len(self.offsets)

    def name(self, index: int) -> str:
        start = int(self.name_ends[index - 1]) if index else 0
        member = bytes(self.names[start:int(self.name_ends[index])]).decode(
            "utf-8", "surrogateescape")
        return f"{self.tars[int(self.files[index])]}:{member}"

    # --- building ---------------------------------------------------------------------------

    @classmethod
    def build(cls, root: str) -> "TarIndex":
        paths = tar_paths(root)
        if "{" not in root and not _looks_like_shard(paths[0]):  # a pattern names shards
            return cls._from_archive(paths[0])
        return cls._from_shards(paths)

    @classmethod
    def _from_archive(cls, path: str) -> "TarIndex":
        """ImageNet's archive: per-class inner tars, or class folders; sorted as a folder. Each
        inner tar's images are sorted and packed into arrays as soon as it is read (1.28M
        entries kept as Python tuples would take 400 MB)."""
        packed, loose, ignored = {}, {}, []  # class: _Arrays (inner tars), [entry] (folders)
        with open(path, "rb") as f:
            for name, offset, size in members(path, f):  # (tarfile seeks back to its next header)
                if name.endswith(".tar"):  # ImageNet's: a tar per class
                    label_name = os.path.basename(name)[:-len(".tar")]
                    if label_name in packed:
                        raise DatasetError(f"{path}: two members hold class {label_name} "
                                           f"({name} is the second); keep one tar per class")
                    entries = []
                    for inner, at, length in members(f"{path}:{name}", f, offset, offset + size):
                        if _is_image(inner):
                            entries.append((os.path.dirname(inner), os.path.basename(inner),
                                            f"{name}/{inner}", at, length))
                        else:
                            ignored.append(f"{name}/{inner}")
                    packed[label_name] = _Arrays.of(entries)
                elif "/" in name and _is_image(name):  # class folders
                    loose.setdefault("", []).append((name, offset, size))
                else:
                    ignored.append(name)
        loose = _by_class_folder(path, loose.get("", []))
        for label_name, entries in loose.items():
            if label_name in packed:
                raise DatasetError(f"{path}: class {label_name} is both a tar and a folder; "
                                   "keep one of them")
            packed[label_name] = _Arrays.of(entries)
        classes = sorted(packed)
        if not classes:
            raise DatasetError(f"{path} holds no image in per-class tars or class folders "
                               "(expected ImageNet's training archive: <class>.tar members)")
        empty = [c for c in classes if not len(packed[c].offsets)]
        if empty:
            raise DatasetError(f"{path}: the classes {', '.join(empty[:5])} hold no image; add "
                               "images or remove them from the archive")
        arrays = _Arrays()
        for label, label_name in enumerate(classes):
            arrays.extend(packed.pop(label_name), label)
        return cls("archive", [path], classes, arrays.done(), ignored)

    @classmethod
    def _from_shards(cls, paths) -> "TarIndex":
        """WebDataset shards: a sample is the members sharing a key (the name up to the first
        dot of its file name), in shard order; its image and its .cls label."""
        arrays, ignored, top = _Arrays(), [], -1
        for file_id, path in enumerate(paths):
            found = 0
            with open(path, "rb") as f:
                for key, parts in _samples_of(path, f):
                    image = next((parts[e] for e in SHARD_IMAGE_EXTENSIONS if e in parts), None)
                    if image is None:
                        ignored += [f"{key}.{e}" for e in parts]
                        continue
                    if "cls" not in parts:
                        raise DatasetError(f"{path}: sample {key} has no {key}.cls (its class "
                                           "index); shards need one per image")
                    offset, size, _ = parts["cls"]  # (pread leaves tarfile's position alone)
                    label = _label(path, key, os.pread(f.fileno(), size, offset))
                    top = max(top, label)
                    arrays.add(file_id, *image[:2], label, image[2])
                    found += 1
            if not found:
                raise DatasetError(f"{path} holds no image (expected WebDataset samples KEY.jpg "
                                   "with KEY.cls)")
        done = arrays.done()
        missing = sorted(set(range(top + 1)) - set(np.unique(done["labels"]).tolist()))
        if missing:  # (numbered classes: the numbers that skip values are classes too)
            logger.warning(f"{paths[0]}{' ...' if len(paths) > 1 else ''}: the class numbers "
                           f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
                           f" ({len(missing)} of 0..{top}) have no image; they stay empty "
                           "classes")
        return cls("shards", paths, [str(k) for k in range(top + 1)], done, ignored)

    # --- kept between starts ----------------------------------------------------------------

    def write(self, path: str) -> bool:
        meta = {"version": VERSION, "layout": self.layout,
                "tars": [_identity(p) for p in self.tars],
                "classes": self.classes, "ignored": self.ignored}
        arrays = {k: getattr(self, k) for k in _INDEX_ARRAYS}
        meta["digest"] = _digest(arrays, self.classes)
        arrays["meta"] = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(
            "utf-8", "surrogateescape"), np.uint8)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, lambda f: np.savez(f, **arrays))
        except OSError as e:
            logger.warning(f"cannot write the tar index {path} ({e}); each start will read the "
                           "tar headers again")
            return False
        return True

    @classmethod
    def read(cls, path: str, root: str):
        """The index at `path` if it is whole, its arrays match their digest and every tar of
        `root` is the file it was made from (path, size, mtime, inode, ctime); else None (read
        as data: no pickle). An index of another version or of changed tars is made again
        without a word; the digest is computed only for one that would be used."""
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {k: stored[k] for k in _INDEX_ARRAYS}
                meta = json.loads(bytes(stored["meta"]).decode("utf-8", "surrogateescape"))
            recorded, classes, tars = meta["tars"], meta["classes"], tar_paths(root)
            if meta["version"] != VERSION or [_identity(p) for p in tars] != recorded:
                return None
            if not (isinstance(classes, list) and classes
                    and all(isinstance(c, str) for c in classes)):
                raise ValueError("its classes are not a list of names")
            if meta.get("digest") != _digest(arrays, classes):
                raise ValueError("its arrays do not match their digest (edited or damaged)")
            index = cls(meta["layout"], tars, classes, arrays, meta["ignored"])
            index._check(recorded)
        except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError,
                zipfile.BadZipFile) as e:
            logger.warning(f"the tar index {path} cannot be read ({type(e).__name__}: {e}); "
                           f"reading the headers of {root} again")
            return None
        return index

    def _check(self, recorded) -> None:
        """Arrays of one length, every image inside its tar, labels of known classes."""
        n = len(self.offsets)
        if n == 0:
            raise ValueError("no entry")
        if any(len(getattr(self, k)) != n for k in ("sizes", "labels", "files", "name_ends")):
            raise ValueError("arrays of different lengths")
        if n and not (0 <= self.files.min() and self.files.max() < len(recorded)
                      and 0 <= self.labels.min() and self.labels.max() < len(self.classes)
                      and self.offsets.min() >= 0 and self.sizes.min() >= 0
                      and int(self.name_ends[-1]) == len(self.names)):
            raise ValueError("an entry outside its tar or its classes")
        ends = self.offsets + self.sizes
        limits = np.array([identity[1] for identity in recorded], np.int64)[self.files]
        if n and (ends > limits).any():
            raise ValueError("an image beyond the end of its tar")


def _looks_like_shard(path: str) -> bool:
    """A single tar is a shard when its first members carry a .cls (a WebDataset sample)."""
    with open(path, "rb") as f:
        for k, (name, _, _) in enumerate(members(path, f)):
            if name.endswith(".cls"):
                return True
            if k >= 8 or name.endswith(".tar"):
                return False
    return False


def _samples_of(path: str, f):
    """(key, {extension: (offset, size, member name)}) per WebDataset sample of shard `f`."""
    key, parts = None, {}
    for name, offset, size in members(path, f):
        folder, base = os.path.split(name)
        stem, dot, extension = base.partition(".")
        this = os.path.join(folder, stem)
        if this != key and parts:
            yield key, parts
            parts = {}
        key = this
        if dot:
            parts[extension.lower()] = (offset, size, name)
    if parts:
        yield key, parts


def _label(path: str, key: str, text: bytes) -> int:
    try:
        label = int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        label = -1
    if label < 0 or not text.strip().isdigit():  # ("1_0": int() reads it as 10)
        raise DatasetError(f"{path}: {key}.cls holds {text[:20]!r}, not a class index (0, 1, ...)")
    if label >= MAX_CLASSES:
        raise DatasetError(f"{path}: {key}.cls holds {label}, beyond the {MAX_CLASSES:,} classes "
                           "a shard set may have: a damaged label?")
    return label


class _Arrays:
    """The index's columns grown as compact arrays (1.28M Python ints would be 35 MB each)."""

    def __init__(self):
        self.files, self.offsets, self.sizes = array("i"), array("q"), array("q")
        self.labels, self.name_ends, self.names = array("i"), array("q"), bytearray()

    @classmethod
    def of(cls, entries) -> "_Arrays":
        """One class's (folder, file name, member name, offset, size) entries, sorted as a
        folder's listing sorts them (label and tar filled in by extend)."""
        arrays = cls()
        for _, _, name, offset, size in sorted(entries):
            arrays.add(0, offset, size, 0, name)
        return arrays

    def extend(self, other: "_Arrays", label: int) -> None:
        base = len(self.names)
        self.files.extend(other.files)
        self.offsets.extend(other.offsets)
        self.sizes.extend(other.sizes)
        self.labels.extend([label] * len(other.labels))
        self.name_ends.extend(end + base for end in other.name_ends)
        self.names += other.names

    def add(self, file_id, offset, size, label, name):
        self.files.append(file_id)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.labels.append(label)
        self.names += name.encode("utf-8", "surrogateescape")
        self.name_ends.append(len(self.names))

    def done(self) -> dict:
        """The columns as numpy arrays over the same memory (no copy); nothing is added after."""
        columns = {"files": (self.files, np.int32), "offsets": (self.offsets, np.int64),
                   "sizes": (self.sizes, np.int64), "labels": (self.labels, np.int32),
                   "name_ends": (self.name_ends, np.int64), "names": (self.names, np.uint8)}
        return {key: np.frombuffer(column, dtype) if len(column) else np.zeros(0, dtype)
                for key, (column, dtype) in columns.items()}


def _digest(arrays: dict, classes: list) -> str:
    """sha256 of the index's arrays and class names (about 0.1 s for ImageNet's 1.28M entries):
    an index edited or damaged with values still in range is read again, not used."""
    digest = hashlib.sha256(json.dumps(classes, ensure_ascii=False).encode("utf-8",
                                                                           "surrogateescape"))
    for key in _INDEX_ARRAYS:
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


def _identity(path: str) -> list:
    stat = os.stat(path)
    # inode and ctime too: a tar replaced by one of the same size and mtime (cp -p, rsync -t)
    # has a new ctime, and a new inode when moved into place
    return [os.path.realpath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino,
            stat.st_ctime_ns]


def _real_paths(root: str) -> list:
    return [os.path.realpath(p) for p in tar_paths(root)]


def tar_index_path(index_dir: str, root: str) -> str:
    digest = hashlib.sha1("\n".join(_real_paths(root)).encode("utf-8", "surrogateescape"))
    return os.path.join(index_dir, digest.hexdigest()[:16] + ".tar-index.npz")


def load_tar_index(root: str, index_dir: str = "") -> TarIndex:
    """The index of `root`: the kept one where it is current, else built (and kept)."""
    path = tar_index_path(index_dir, root) if index_dir else ""
    index = TarIndex.read(path, root) if path else None
    if index is None:
        index = TarIndex.build(root)
        if path and index.write(path):
            logger.info(f"{root}: {len(index)} images indexed; the index is kept in {path}")
    return index


class TarReader:
    """The bytes of sample `index`: one pread at its offset, on this process's own descriptor."""

    def __init__(self, index: TarIndex):
        self.index, self._fds, self._pid = index, {}, None

    def __getstate__(self):  # a worker (spawned or forked) opens its own descriptors
        return {"index": self.index, "_fds": {}, "_pid": None}

    def read(self, index: int) -> bytes:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()
        file_id = int(self.index.files[index])
        fd = self._fds.get(file_id)
        if fd is None:
            fd = self._fds[file_id] = os.open(self.index.tars[file_id], os.O_RDONLY)
        size, offset = int(self.index.sizes[index]), int(self.index.offsets[index])
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"cut short: {len(data)} of {size} bytes at offset {offset}")
        return data
