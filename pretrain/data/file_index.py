"""The file list of an image folder, kept between starts (DATA.FILE_INDEX).

Listing ImageNet's 1.28 million files walks 1,000 folders and costs seconds on a local disk and
minutes on a network file system, at every start and on every rank. The listing is written
once, atomically, to INDEX_DIR/<hash of the folder's real path>.json, and reused while the
folder is unchanged: every directory the listing walked keeps its modification time, and adding,
removing or renaming an entry changes its directory's time, so a start checks ~1,000 `stat`s
instead of listing 1.28 million names. A directory changed within TRUST_MARGIN_S of the index's
writing is not trusted (file systems with coarse clocks could hide a change in the same
second): the folder is listed again. An index that cannot be read (half-written by another
tool, another version, damaged) is listed again, with a warning, never half-used.
"""

import hashlib
import json
import logging
import os
import time

from ssl2det.io import atomic_write

logger = logging.getLogger("pretrain")

VERSION = 1
TRUST_MARGIN_S = 2.0


def index_path(index_dir: str, root: str) -> str:
    real = os.path.realpath(root)
    return os.path.join(index_dir, hashlib.sha1(real.encode("utf-8", "surrogateescape"))
                        .hexdigest()[:16] + ".json")


def _directory_times(root: str, directories) -> dict:
    """{directory relative to root: st_mtime_ns}, or None when one is gone."""
    times = {}
    for rel in directories:
        try:
            times[rel] = os.stat(os.path.join(root, rel)).st_mtime_ns
        except OSError:
            return None
    return times


def _inside(relative: str) -> bool:
    """A relative path that stays inside the root (no absolute path, no '..')."""
    return isinstance(relative, str) and not os.path.isabs(relative) and ".." not in (
        relative.split(os.sep))


def _check_entries(groups, ignored, directories, classes: int) -> None:
    """The index read as data, not trusted: every entry of the type the listing writes, inside
    the root, labelled with a class there is. A ValueError names the first that is not (a hand
    edit, a damaged file): the folder is then listed again."""
    for folder, label, names in groups:
        if not (_inside(folder) and isinstance(label, int) and 0 <= label < classes
                and isinstance(names, list)
                and all(isinstance(n, str) and n and os.sep not in n and n != ".." for n in names)):
            raise ValueError(f"the entry for {folder!r} is not a folder inside the root with a "
                             "class and a list of file names")
    if not (isinstance(ignored, list) and all(_inside(p) for p in ignored)):
        raise ValueError("'ignored' is not a list of paths inside the root")
    if not (isinstance(directories, dict) and all(
            _inside(d) and isinstance(t, int) for d, t in directories.items())):
        raise ValueError("'directories' is not a map of folders inside the root to times")


class FileIndex:
    """What a listing found: the images as groups [folder relative to root, label, [file
    names]] in listing order, the files it ignored (no image extension; relative paths), and
    the directories it walked."""

    def __init__(self, groups, ignored, directories):
        self.groups, self.ignored, self.directories = groups, ignored, directories

    def samples(self, root: str) -> list:
        """[(path, label)] as ImageFolder lists them."""
        samples = []
        for folder, label, names in self.groups:
            prefix = os.path.join(root, folder, "")
            samples += [(prefix + name, label) for name in names]
        return samples

    def labels(self) -> set:
        return {label for _, label, names in self.groups if names}

    def write(self, path: str, root: str, classes) -> bool:
        """Write the index (atomically); False when the folder changed too recently to trust
        its times, or the index folder cannot be written (then every start lists again)."""
        built = time.time_ns()
        times = _directory_times(root, self.directories)
        if times is None or max(times.values(), default=0) >= built - TRUST_MARGIN_S * 1e9:
            return False
        record = {"version": VERSION, "root": os.path.realpath(root), "classes": list(classes),
                  "directories": times, "groups": self.groups,
                  "ignored": self.ignored}
        payload = json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, lambda f: f.write(payload))
        except OSError as e:
            logger.warning(f"cannot write the file index {path} ({e}); each start will list "
                           f"{root} again")
            return False
        return True

    @classmethod
    def read(cls, path: str, root: str, classes):
        """The index at `path` if it is whole and `root` has not changed since; else None."""
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read().decode("utf-8", "surrogateescape"))
            stale = (record["version"] != VERSION or record["root"] != os.path.realpath(root)
                     or record["classes"] != list(classes))
            recorded = record["directories"]
            groups = [(folder, label, names) for folder, label, names in record["groups"]]
            ignored = record["ignored"]
            _check_entries(groups, ignored, recorded, len(classes))
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.warning(f"the file index {path} cannot be read ({type(e).__name__}: {e}); "
                           f"listing {root} again")
            return None
        if stale:
            return None
        # (a new class folder changes the root's time, which is recorded too; write() refused
        # times within the margin of `built`)
        if _directory_times(root, recorded) != recorded:
            return None
        return cls(groups, ignored, list(recorded))
