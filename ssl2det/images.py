"""Images as both stages read them: decoded by content as RGB, and one policy for files that
cannot be decoded (skip with a warning and a list, or stop naming the file)."""

import logging
import os

from PIL import Image

from .errors import DatasetError

logger = logging.getLogger(__name__)

BAD_IMAGE_LIST = "bad_images.txt"


def decode_rgb(path: str) -> Image.Image:
    """Decode by content, not by file name, and convert to RGB (grayscale, CMYK, palette)."""
    with Image.open(path) as image:
        image.load()  # decodes now: a truncated file fails here, not inside a transform
        return image.convert("RGB")


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


def read_bad_image_list(output_dir: str) -> dict:
    """{path: reason} of OUTPUT_DIR/bad_images.txt (empty if there is none)."""
    path = os.path.join(output_dir, BAD_IMAGE_LIST)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
