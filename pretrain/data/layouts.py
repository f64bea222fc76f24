"""How images lie on disk: one class per layout, asked once per root (`layout_of`). Every
reader of DATA.ROOT, DATA.VAL_ROOT, KNN.TRAIN_ROOT and the probe's roots (the loaders, the
file index, the kNN monitor's check, the pipeline's pre-flight) goes through it, so a new
layout is one class here, added to LAYOUTS.

- `archive or shards` (archives.py): ImageNet's training tar as downloaded, a tar of class
  folders, WebDataset shards (`X.tar`, or a brace pattern `DIR/NAME-{000000..000146}.tar`);
  a compressed tar is claimed and refused in one line (it cannot be read by offset).
- `folder` (datasets.ImageFiles): `ROOT/<class>/<image>.jpg`; it takes any other path.
"""

import os

from ssl2det.errors import DatasetError

from .archives import load_tar_index, tar_index_path
from .tar_files import tar_paths
from .datasets import ImageFiles, TarImages
from .file_index import index_path

#: what the pre-flight counts as an image in a folder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ImageLayout:
    """A layout: which roots it `claims`, whether a root `exists`, the image set it `open`s,
    where the index of a root is kept (`index_path`), and, for the pre-flight, how many images
    a root holds (`count`) or why it cannot be read (`problem`)."""

    name = ""

    def claims(self, root: str) -> bool:
        raise NotImplementedError

    def exists(self, root: str) -> bool:
        raise NotImplementedError

    def open(self, root: str, transform=None, bad_images: str = "skip", report_dir: str = "",
             index_dir: str = ""):
        raise NotImplementedError

    def index_path(self, index_dir: str, root: str) -> str:
        raise NotImplementedError

    def count(self, root: str, index_dir: str = "") -> int:
        raise NotImplementedError

    def problem(self, root: str, index_dir: str = "") -> str:
        """"" when `root` holds images, else why not, in one line."""
        raise NotImplementedError


class TarLayout(ImageLayout):
    name = "archive or shards"

    def claims(self, root):
        return "{" in root or root.endswith((".tar", *_COMPRESSED))

    def _refuse_compressed(self, root):
        if root.endswith(_COMPRESSED):
            raise DatasetError(f"{root} is a compressed tar, which cannot be read by offset; "
                               "decompress it once (e.g. gunzip) and give the .tar")

    def exists(self, root):
        try:
            return not root.endswith(_COMPRESSED) and bool(tar_paths(root))
        except DatasetError:
            return False

    def open(self, root, transform=None, bad_images="skip", report_dir="", index_dir=""):
        self._refuse_compressed(root)
        return TarImages(root, transform, bad_images=bad_images, report_dir=report_dir,
                         index_dir=index_dir)

    def index_path(self, index_dir, root):
        return tar_index_path(index_dir, root)

    def count(self, root, index_dir=""):
        self._refuse_compressed(root)
        return len(load_tar_index(root, index_dir))

    def problem(self, root, index_dir=""):
        try:
            return "" if self.count(root, index_dir) else f"{root} holds no image"
        except DatasetError as e:
            return str(e)


class FolderLayout(ImageLayout):
    name = "folder"

    def claims(self, root):
        return True

    def exists(self, root):
        return os.path.isdir(root)

    def open(self, root, transform=None, bad_images="skip", report_dir="", index_dir=""):
        return ImageFiles(root, transform, bad_images=bad_images, report_dir=report_dir,
                          index_dir=index_dir)

    def index_path(self, index_dir, root):
        return index_path(index_dir, root)

    def count(self, root, index_dir=""):
        return sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in
                   os.walk(root, followlinks=True) for f in files)

    def problem(self, root, index_dir=""):
        if not os.path.isdir(root):
            return (f"folder {root} does not exist (expected ROOT/<class>/<image>.jpg, an "
                    "archive .tar or shards NAME-{000000..000099}.tar)")
        if not os.access(root, os.R_OK | os.X_OK):
            return f"folder {root} is not readable"
        if not self.count(root):
            return f"folder {root} holds no image (expected ROOT/<class>/<image>.jpg)"
        return ""


#: asked in this order; the folder takes what no other claims
LAYOUTS = (TarLayout(), FolderLayout())


def layout_of(root: str) -> ImageLayout:
    return next(layout for layout in LAYOUTS if layout.claims(root))


def open_images(root: str, transform=None, bad_images: str = "skip", report_dir: str = "",
                index_dir: str = ""):
    """The image set at `root`, in its layout."""
    return layout_of(root).open(root, transform, bad_images=bad_images, report_dir=report_dir,
                                index_dir=index_dir)
