"""Image folders (`ROOT/class/*.jpg`, ImageNet layout) for pretraining and evaluation.

Real folders hold bad files (ImageNet has CMYK and PNG-in-.jpg files; crawled sets have
truncated and empty ones). Every image is decoded by content and converted to RGB; one that
cannot be decoded is replaced by the next readable image of the folder (so a batch keeps its
size and a run never dies mid-epoch), with a warning naming it, and listed in
OUTPUT_DIR/bad_images.txt. DATA.BAD_IMAGES "error" makes the first bad file fatal instead (the
policy is ssl2det.images.BadImages, shared with stage two).
"""

import logging
import os

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from ssl2det.errors import DatasetError
from ssl2det.images import BadImages, decode_rgb, printable_path

logger = logging.getLogger(__name__)


class ImageFiles(ImageFolder):
    """ImageFolder that reads every image as RGB and survives bad files (module docstring).

    bad_images: "skip" or "error"; report_dir: where bad_images.txt is written ("" for none).
    """

    def __init__(self, root: str, transform=None, bad_images: str = "skip", report_dir: str = ""):
        self.bad = BadImages(bad_images, report_dir)
        ignored = []
        try:
            super().__init__(root, transform=transform, is_valid_file=lambda p: (
                has_file_allowed_extension(p, IMG_EXTENSIONS) or ignored.append(p)))
        except (FileNotFoundError, OSError) as e:
            raise DatasetError(f"cannot read image folder {root!r}: {e}. Expected the ImageNet "
                               "layout ROOT/<class>/<image>.jpg; set DATA.ROOT / DATA.VAL_ROOT.") from None
        if ignored:
            logger.warning(f"{root}: ignored {len(ignored)} files without an image extension, "
                           f"e.g. {', '.join(map(printable_path, ignored[:3]))}")
            for path in ignored:
                self.bad.ignored(path)

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None,
                     allow_empty=False):
        """torchvision's listing (same order), except that each real folder is read once (a
        symbolic link back to a parent would repeat its images up to 40 times), and class
        folders without an image are named in the error."""
        samples, empty = [], []
        for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            visited, listing = set(), []
            for folder, subfolders, files in os.walk(os.path.join(directory, name),
                                                     followlinks=True):
                real = os.path.realpath(folder)
                if real in visited:
                    subfolders[:] = []
                    continue
                visited.add(real)
                listing.append((folder, files))
            found = [(os.path.join(folder, f), label) for folder, files in sorted(listing)
                     for f in sorted(files) if is_valid_file(os.path.join(folder, f))]
            samples += found
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise DatasetError(f"{directory}: the class folders {', '.join(map(printable_path, empty))} "
                               "hold no image; add images or remove those folders")
        return samples

    def read(self, index: int):
        """(RGB image, label) of sample `index`, or of the next readable one after it."""
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return decode_rgb(path), label
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                self.bad.unreadable(path, e)
        raise DatasetError(f"no image in {self.root} can be decoded; see the warnings above")

    def __getitem__(self, index):
        image, label = self.read(index)
        return (self.transform(image) if self.transform else image), label


class SeededViews(torch.utils.data.Dataset):
    """An image folder whose item (index, epoch) is the list of views of image `index`.

    The augmentation's randomness is seeded by (seed, epoch, index) alone, so the views of an
    image do not depend on the number of loader workers, the number of ranks, or on where a
    resumed run restarted: a killed and resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, folder: ImageFiles, transform, seed: int):
        self.folder, self.transform, self.seed = folder, transform, seed

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, epoch = item
        image, label = self.folder.read(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 100_000_007 + index) % 2**63)
            views = self.transform(image)
        return views, label
