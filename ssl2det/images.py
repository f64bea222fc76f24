"""Images as both stages read them: decoded by content as RGB, and one policy for files that
cannot be decoded (skip with a warning and a list, or stop naming the file)."""

import logging
import os

import numpy as np
from PIL import Image

from .errors import DatasetError

logger = logging.getLogger(__name__)

BAD_IMAGE_LIST = "bad_images.txt"


_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable_path(path: str) -> str:
    """A file name as it can go into a log or a one-name-per-line list: bytes that are not UTF-8
    (surrogate-escaped by the OS layer) as \\xNN, tabs, newlines, other control characters and
    backslashes escaped. Everything else is kept as it is."""
    out = []
    for c in path:
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of the file name
            out.append(f"\\x{code - 0xDC00:02x}")
        elif c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(c)
    return "".join(out)


_WIDE_GRAYSCALE = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit PNGs open in these modes


def decode_rgb(path: str) -> Image.Image:
    """Decode by content, not by file name, and convert to RGB (grayscale, CMYK, palette).
    16-bit grayscale is scaled to 8 bits (PIL's own conversion would saturate it to white)."""
    with Image.open(path) as image:
        image.load()  # decodes now: a truncated file fails here, not inside a transform
        if image.mode in _WIDE_GRAYSCALE:
            levels = np.asarray(image, dtype=np.float64) / 257  # 0..65535 -> 0..255
            image = Image.fromarray(levels.clip(0, 255).round().astype(np.uint8), "L")
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
        reason = printable_path(f"{type(error).__name__}: {str(error)[:200]}")
        name = printable_path(path)
        if self.policy == "error":  # (decoded, but unusable: of another size than annotated)
            how = "decoded" if isinstance(error, OSError) else "used"
            raise DatasetError(f"{name} cannot be {how} ({reason}). Remove or replace the file, "
                               f"or set {self.key} skip to skip such files with a warning.")
        self._record(name, reason, f"skipping unreadable image {name} ({reason}); the next "
                                   "image is used in its place")

    def ignored(self, path: str) -> None:
        """A file without an image extension, left out of the data set (listed, no warning)."""
        self._record(printable_path(path), "not an image file name (ignored)")

    def _record(self, path, reason, warning=""):
        """`path` and `reason` as printable_path makes them: one line each, whatever the name."""
        if path in self._seen:  # once per process; read_bad_image_list deduplicates the rest
            return
        self._seen.add(path)
        if warning:
            logger.warning(warning)
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(f"{path}\t{reason}\n")


def read_bad_image_list(output_dir: str) -> dict:
    """{path: reason} of OUTPUT_DIR/bad_images.txt (empty if there is none); paths as
    printable_path wrote them."""
    path = os.path.join(output_dir, BAD_IMAGE_LIST)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if "\t" in line)
