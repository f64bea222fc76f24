"""Image folders (`ROOT/class/*.jpg`, ImageNet layout) for pretraining and evaluation.

Real folders hold bad files (ImageNet has CMYK and PNG-in-.jpg files; crawled sets have
truncated and empty ones). Every image is decoded by content and converted to RGB; one that
cannot be decoded is replaced by the next readable image of the folder (so a batch keeps its
size and a run never dies mid-epoch), with a warning naming it, and listed in
OUTPUT_DIR/bad_images.txt. DATA.BAD_IMAGES "error" makes the first bad file fatal instead.
"""

import logging
import os

import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

logger = logging.getLogger(__name__)

BAD_IMAGE_LIST = "bad_images.txt"


class DatasetError(RuntimeError):
    """A data folder or file that cannot be used; the message names it and the fix."""


def user_message(error: BaseException) -> str:
    """The message of an error, also when a DataLoader worker re-raised it with the worker's
    traceback folded into the text."""
    text = str(error)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


class BadImages:
    """What happens to a file that cannot be used as an image. `policy` "skip": a warning once
    per file and a line `path<TAB>reason` appended to REPORT_DIR/bad_images.txt ("" for no
    file; one short append per line is safe from several loader workers and ranks); "error": a
    DatasetError naming the file and the config `key` that turns skipping back on."""

    def __init__(self, policy: str = "skip", report_dir: str = "", key: str = "DATA.BAD_IMAGES"):
        self.policy, self.key = policy, key
        self.path = os.path.join(report_dir, BAD_IMAGE_LIST) if report_dir else ""
        self._seen = set()

    def unreadable(self, path: str, error: BaseException) -> None:
        """Called for a file that failed to decode; the caller then uses the next image."""
        reason = f"{type(error).__name__}: {str(error)[:200]}"
        if self.policy == "error":
            raise DatasetError(f"{path} cannot be decoded ({reason}). Remove or replace the file, "
                               f"or set {self.key} skip to skip such files with a warning.")
        self._record(path, reason, f"skipping unreadable image {path} ({reason}); the next "
                                   "image is used in its place")

    def ignored(self, path: str) -> None:
        """A file without an image extension, left out of the data set (listed, no warning)."""
        self._record(path, "not an image file name (ignored)")

    def _record(self, path, reason, warning=""):
        if path in self._seen:  # once per process; read_bad_image_list deduplicates the rest
            return
        self._seen.add(path)
        if warning:
            logger.warning(warning)
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a") as f:
                f.write(f"{path}\t{reason}\n")


def decode_rgb(path: str) -> Image.Image:
    """Decode by content, not by file name, and convert to RGB (grayscale, CMYK, palette)."""
    with Image.open(path) as image:
        image.load()  # decodes now: a truncated file fails here, not inside a transform
        return image.convert("RGB")


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
                           f"e.g. {', '.join(ignored[:3])}")
            for path in ignored:
                self.bad.ignored(path)

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


def read_bad_image_list(output_dir: str) -> dict:
    """{path: reason} of OUTPUT_DIR/bad_images.txt (empty if there is none)."""
    path = os.path.join(output_dir, BAD_IMAGE_LIST)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)


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
