"""Image folders (`ROOT/class/*.jpg`, ImageNet layout) for pretraining and evaluation.

Real folders hold bad files (ImageNet has CMYK and PNG-in-.jpg files; crawled sets have
truncated and empty ones). Every image is decoded by content and converted to RGB; one that
cannot be decoded is replaced by the next readable image of the folder (so a batch keeps its
size and a run never dies mid-epoch), with a warning naming it, and listed in
OUTPUT_DIR/bad_images.txt. DATA.BAD_IMAGES "error" makes the first bad file fatal instead (the
policy is ssl2det.images.BadImages, shared with stage two).
"""

import io
import logging
import os
import random

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ssl2det.errors import DatasetError
from ssl2det.images import BadImages, decode_rgb, printable_path

from .archives import TarReader, load_tar_index
from .file_index import FileIndex, index_path
from .views import EncodedImage

logger = logging.getLogger(__name__)


class ReadsImages:
    """What every image set shares, over its `name(i)`, `label(i)` and `read_bytes(i)`: the
    bad-image policy (`bad`), decoded images and seeded views. `numbered_classes`: the classes
    are only numbers (WebDataset's .cls), not names."""

    numbered_classes = False

    def same_classes(self, other) -> bool:
        """Both label the same classes: by name, by count where one only numbers them."""
        if self.numbered_classes or other.numbered_classes:
            return len(self.classes) == len(other.classes)
        return self.classes == other.classes

    def _first_readable(self, index: int, read):
        """(read(name, bytes), label) of sample `index`, or of the next one after it that
        `read` can decode."""
        for offset in range(len(self)):
            k = (index + offset) % len(self)
            name = self.name(k)
            try:
                return read(name, self.read_bytes(k)), self.label(k)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                self.bad.unreadable(name, e)
        raise DatasetError(f"no image in {self.root} can be decoded; see the warnings above")

    def read(self, index: int):
        """(RGB Pillow image, label) of sample `index`, or of the next readable one after it."""
        return self._first_readable(index, lambda name, data: decode_rgb(io.BytesIO(data)))

    def read_views(self, index: int, views, rng):
        """(views(EncodedImage, rng), label) of sample `index`, or of the next readable one."""
        return self._first_readable(index, lambda name, data: views(EncodedImage(name, data),
                                                                    rng))

    def __getitem__(self, index):
        image, label = self.read(index)
        return (self.transform(image) if self.transform else image), label


def _refuse_a_second_label(directory, folder, real, name, owners) -> None:
    """`folder` (in class `name`, at real path `real`) must not be the root, nor lie in another
    class's folder (the nearest of its real ancestors that is a class folder or the root says
    which): its images would be samples of two classes."""
    path = real
    while path not in owners:
        parent = os.path.dirname(path)
        if parent == path:
            return  # outside the root: a class folder linked from elsewhere
        path = parent
    owner = owners[path]
    if owner == name or (owner is None and path != real):
        return  # its own class, or a folder of the root that is no class
    what = "the image root" if owner is None else f"class {printable_path(owner)}'s folder"
    raise DatasetError(f"{directory}: {printable_path(os.path.relpath(folder, directory))} leads "
                       f"into {what} ({real}): its images would be read again under class "
                       f"{printable_path(name)}; remove the link")


class ImageFiles(ReadsImages, ImageFolder):
    """ImageFolder that reads every image as RGB and survives bad files (module docstring).

    bad_images: "skip" or "error"; report_dir: where bad_images.txt is written ("" for none);
    index_dir: where the folder's file index is kept between starts (file_index.py; "" lists
    the folder every time).
    """

    def __init__(self, root: str, transform=None, bad_images: str = "skip", report_dir: str = "",
                 index_dir: str = ""):
        self.bad, self.index_dir = BadImages(bad_images, report_dir), index_dir
        self.ignored_files = []  # filled by make_dataset
        try:
            super().__init__(root, transform=transform, is_valid_file=lambda p: (
                has_file_allowed_extension(p, IMG_EXTENSIONS)))
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"cannot read image folder {root!r}: {e}. Expected the ImageNet "
                               "layout ROOT/<class>/<image>.jpg, ImageNet's training .tar or "
                               "shards NAME-{000000..000146}.tar; set DATA.ROOT / DATA.VAL_ROOT."
                               ) from None
        if self.ignored_files:
            ignored = self.ignored_files
            logger.warning(f"{root}: ignored {len(ignored)} files without an image extension, "
                           f"e.g. {', '.join(map(printable_path, ignored[:3]))}")
            for path in ignored:
                self.bad.ignored(path)

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty=False):
        """torchvision's listing (same order), from the file index where it is current; and
        class folders without an image are named in the error."""
        classes = sorted(class_to_idx, key=class_to_idx.get)
        path = index_path(self.index_dir, directory) if self.index_dir else ""
        index = FileIndex.read(path, directory, classes) if path else None
        if index is None:
            index = self.list_folder(directory, class_to_idx, is_valid_file)
            if path and index.write(path, directory, classes):
                logger.info(f"{directory}: listed; the list is kept in {path} for the next start")
        self.ignored_files = [os.path.join(directory, rel) for rel in index.ignored]
        empty = set(classes) - {classes[label] for label in index.labels()}
        if empty and not allow_empty:
            raise DatasetError(f"{directory}: the class folders "
                               f"{', '.join(map(printable_path, sorted(empty)))} hold no image; "
                               "add images or remove those folders")
        return index.samples(directory)

    @staticmethod
    def list_folder(directory, class_to_idx, is_valid_file) -> FileIndex:
        """Walk the class folders, each real folder once (a symbolic link back to a parent
        would repeat its images up to 40 times); a link into the root or another class's folder
        is refused (its images would be read again under a second label)."""
        groups, ignored, walked = [], [], [""]
        owners = {os.path.realpath(directory): None}  # real folder: its class (None: the root)
        for name in class_to_idx:
            owners.setdefault(os.path.realpath(os.path.join(directory, name)), name)
        for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            visited, listing = set(), []
            for folder, subfolders, files in os.walk(os.path.join(directory, name),
                                                     followlinks=True):
                real = os.path.realpath(folder)
                if real in visited:
                    subfolders[:] = []
                    continue
                visited.add(real)
                _refuse_a_second_label(directory, folder, real, name, owners)
                listing.append((os.path.relpath(folder, directory), files))
            for folder, files in sorted(listing):
                walked.append(folder)
                names = []
                for f in sorted(files):
                    if is_valid_file(os.path.join(directory, folder, f)):
                        names.append(f)
                    else:
                        ignored.append(os.path.join(folder, f))
                groups.append((folder, label, names))
        return FileIndex(groups, ignored, walked)

    def name(self, index: int) -> str:
        return self.samples[index][0]

    def label(self, index: int) -> int:
        return self.samples[index][1]

    def read_bytes(self, index: int) -> bytes:
        with open(self.samples[index][0], "rb") as f:
            return f.read()


class TarImages(ReadsImages, torch.utils.data.Dataset):
    """The images of ImageNet's training archive or of WebDataset shards (archives.py), read by
    index, numbered as the same images in a folder; the same policies as ImageFiles."""

    def __init__(self, root: str, transform=None, bad_images: str = "skip", report_dir: str = "",
                 index_dir: str = ""):
        self.root, self.transform = root, transform
        self.bad = BadImages(bad_images, report_dir)
        self.index = load_tar_index(root, index_dir)
        self.reader = TarReader(self.index)
        self.classes = self.index.classes
        self.numbered_classes = self.index.layout == "shards"
        if self.index.ignored:
            ignored = self.index.ignored
            logger.warning(f"{root}: ignored {len(ignored)} members that are not images, e.g. "
                           f"{', '.join(map(printable_path, ignored[:3]))}")
            for name in ignored:
                self.bad.ignored(f"{root}:{name}")

    def __len__(self):
        return len(self.index)

    def name(self, index: int) -> str:
        return self.index.name(index)

    def label(self, index: int) -> int:
        return int(self.index.labels[index])

    def read_bytes(self, index: int) -> bytes:
        return self.reader.read(index)


class SeededViews(torch.utils.data.Dataset):
    """An image folder whose item (index, epoch) is the list of views of image `index`.

    The augmentation's randomness is seeded by (seed, epoch, index) alone, so the views of an
    image do not depend on the number of loader workers, the number of ranks, or on where a
    resumed run restarted: a killed and resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, folder: ImageFiles, views, seed: int):
        self.folder, self.views, self.seed = folder, views, seed

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, epoch = item
        rng = random.Random((self.seed * 1_000_003 + epoch * 100_000_007 + index) % 2**63)
        return self.folder.read_views(index, self.views, rng)
