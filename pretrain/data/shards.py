"""WebDataset shards written from an image folder, ImageNet's training archive or other shards
(tools/make_shards.py).

A sample is `KEY.<image extension>` (the file's bytes, unchanged) and `KEY.cls` (its class
index as text), in the source's sample order (datasets.open_images: a folder's sorted listing),
IMAGES_PER_SHARD to a shard, so the shards read back (archives.py) as the same samples in the
same order. Each shard is written to a temporary file and renamed when whole, so a run that is
cut off leaves only whole shards; run again, it keeps them and writes the rest. A manifest,
OUT/NAME.json, records the source and the shard size: a second run with other ones is refused
instead of mixing two sets. The members' metadata is fixed (mtime 0, owner 0), so the same source
gives the same bytes.
"""

import io
import json
import os
import re
import tarfile

from tqdm import tqdm

from ssl2det.errors import ConfigError
from ssl2det.io import atomic_write

from .archives import SHARD_IMAGE_EXTENSIONS
from .layouts import open_images


def shard_pattern(out: str, name: str, shards: int) -> str:
    """The brace pattern DATA.ROOT takes for the shards written."""
    return os.path.join(out, f"{name}-{{{0:06d}..{shards - 1:06d}}}.tar")


def sample_key(member_name: str, used: set) -> tuple:
    """(KEY, extension) of an image for a shard: the class and the file's stem, dots replaced
    (a WebDataset key ends at the first dot of the file name), made unique with the sample's
    position where two stems would meet."""
    base = member_name.replace("\\", "/").rsplit(":", 1)[-1]
    parts = base.split("/")
    stem, _, extension = parts[-1].rpartition(".")
    extension = extension.lower()
    if extension not in SHARD_IMAGE_EXTENSIONS:
        extension = "jpg"  # decoded by content: the extension only marks the image member
    label_folder = parts[-2].removesuffix(".tar") if len(parts) > 1 else ""
    key = "/".join(p for p in (label_folder, stem.replace(".", "_")) if p)
    while key in used:
        key += "_"
    used.add(key)
    return key, extension


def _member(name: str, data: bytes) -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    return info, io.BytesIO(data)


def write_shards(source: str, out: str, images_per_shard: int = 1000, name: str = "shard",
                 progress: bool = True) -> str:
    """Write the shards of `source` into `out` (resuming a cut-off run); the pattern for
    DATA.ROOT."""
    if images_per_shard < 1:
        raise ConfigError(f"--images-per-shard must be 1 or more, got {images_per_shard}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) or ".." in name:
        raise ConfigError(f"--name {name!r} must be a file name prefix (letters, digits, '_', "
                          "'-', '.'; no '/' or '..'): the shards go into OUT, nowhere else")
    real_out, real_source = os.path.realpath(out), os.path.realpath(source.split("{")[0])
    if os.path.isdir(source) and (real_out == real_source or
                                  real_out.startswith(real_source + os.sep)):
        raise ConfigError(f"OUT {out} lies inside SRC {source}: the shards would become part of "
                          "the image folder (which then cannot be pretrained on or sharded "
                          "again); choose a folder outside it")
    images = open_images(source)
    shards = -(-len(images) // images_per_shard)
    os.makedirs(out, exist_ok=True)
    manifest = {"source": os.path.realpath(source), "images": len(images),
                "images_per_shard": images_per_shard, "shards": shards}
    manifest_path = os.path.join(out, f"{name}.json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            recorded = json.load(f)
        if recorded != manifest:
            raise ConfigError(f"{out} holds shards {name}-* of another source or shard size "
                              f"({manifest_path}: {recorded}); choose another folder or --name")
    else:
        atomic_write(manifest_path, lambda f: f.write(json.dumps(manifest).encode()))
    bar = tqdm(total=len(images), unit="image", desc="shards", disable=not progress)
    for shard in range(shards):
        first, last = shard * images_per_shard, min(len(images), (shard + 1) * images_per_shard)
        path = os.path.join(out, f"{name}-{shard:06d}.tar")
        if not os.path.exists(path):  # whole: shards appear only by a rename
            atomic_write(path, lambda f: _write_shard(f, images, first, last))
        bar.update(last - first)
    bar.close()
    return shard_pattern(out, name, shards)


def _write_shard(f, images, first: int, last: int) -> None:
    used = set()
    with tarfile.open(fileobj=f, mode="w") as tar:
        for k in range(first, last):
            key, extension = sample_key(images.name(k), used)
            tar.addfile(*_member(f"{key}.{extension}", images.read_bytes(k)))
            tar.addfile(*_member(f"{key}.cls", str(images.label(k)).encode()))
