"""What a tar root names and what a tar holds, read strictly: the files of a name or a brace
pattern (counted before it is expanded), and the members of a tar, its headers read one at a
time, where Python's tarfile is lenient: it takes a damaged header for the archive's end, reads
on past an empty inner tar into the next member, and reads gzip or text as an archive without
members. Each of these is an error here, naming the file and what it is."""

import os
import re
import tarfile

from braceexpand import braceexpand

from ssl2det.errors import DatasetError

#: the most shards a brace pattern may name (ImageNet's 1.28M images make 147 to 1,282 shards in
#: the usual sizes; ours): a pattern is counted before it is expanded
MAX_SHARDS = 100_000


def brace_count(pattern: str) -> int:
    """How many names a brace pattern makes, counted without making them (each {a..b} range
    and {x,y} list multiplies; nested braces count as their alternatives do, at most)."""
    count = 1
    for group in re.findall(r"\{([^{}]*)\}", pattern):
        numbers = re.fullmatch(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?", group)
        if numbers:
            first, last, step = int(numbers[1]), int(numbers[2]), abs(int(numbers[3] or 1)) or 1
            count *= abs(last - first) // step + 1
        else:
            count *= len(group.split(","))
    return count


def _expanded(root: str) -> list:
    if "{" not in root:
        return [root]
    count = brace_count(root)
    if count > MAX_SHARDS:
        raise DatasetError(f"{root} names {count:,} shards, more than the "
                           f"{MAX_SHARDS:,} a pattern may name: is a range too wide (e.g. "
                           "{000000..099999999} for {000000..000999})?")
    return list(braceexpand(root))


def tar_paths(root: str) -> list:
    """The tar files `root` names, in order; a pattern matching no file names it."""
    paths = _expanded(root)
    missing = [p for p in paths if not os.path.isfile(p)]
    if len(missing) == len(paths):
        what = f"the pattern {root} matches no file" if "{" in root else f"{root} is not a file"
        raise DatasetError(f"{what} (expected ImageNet's training .tar or WebDataset shards "
                           "DIR/NAME-{000000..000146}.tar); set DATA.ROOT / DATA.VAL_ROOT")
    if missing:
        raise DatasetError(f"{root}: {len(missing)} of its {len(paths)} shards are missing, e.g. "
                           f"{', '.join(missing[:3])}")
    return paths


def members(path: str, f, start: int = 0, end: int = None):
    """(name, data offset, size) of the regular-file members of the tar at byte `start` of the
    open file `f` (one member of an outer tar when `end` is given), its headers read one at a
    time (tarfile would keep them all: 1.28M TarInfo objects)."""
    end = os.fstat(f.fileno()).st_size if end is None else end
    if end == start:  # an empty inner tar (tarfile would read on into the outer one's next header)
        return
    _check_start(path, f, start, end)
    f.seek(start)
    tar = None
    try:
        tar = tarfile.TarFile(fileobj=f, mode="r")
        while True:
            member = tar.next()
            if member is None:
                _check_end(path, f, tar.offset, end)
                return
            tar.members.clear()
            if member.islnk() or member.issym():
                # a link's data is its target's, found only by keeping every name read so far
                # (1.28M in ImageNet's folder archive): refused by name rather than dropped
                kind = "a hard link" if member.islnk() else "a symbolic link"
                raise DatasetError(f"{path}: member {member.name} is {kind} to "
                                   f"{member.linkname}; archive the files themselves (GNU tar: "
                                   "--hard-dereference / --dereference)")
            if member.offset_data + member.size > end:
                raise DatasetError(
                    f"{path} is cut short: member {member.name} at offset {member.offset} needs "
                    f"{member.size} bytes from {member.offset_data}, the "
                    f"{'file' if start == 0 else 'enclosing tar'} ends at {end} (a copy that "
                    "did not finish?); copy it again")
            if member.isreg():
                yield member.name.removeprefix("./"), member.offset_data, member.size
    except tarfile.TarError as e:
        at = tar.offset if tar is not None else start
        raise DatasetError(f"{path} is not a readable tar at offset {at} ({e}); is it whole? "
                           "Copy it again") from None


def _check_start(path: str, f, start: int, end: int) -> None:
    """A tar's first block is a header or the end: name what else it is (tarfile would read a
    gzip or text file inside an archive as an archive without members)."""
    block = os.pread(f.fileno(), min(512, end - start), start)
    if block.startswith(b"\x1f\x8b"):
        raise DatasetError(f"{path} is gzip-compressed, not a plain tar: decompress it (gunzip; "
                           "ImageNet's class tars are plain)")
    if len(block) < 512:
        raise DatasetError(f"{path} is not a tar: {end - start} bytes, less than one header")
    if block.strip(b"\0"):
        try:
            tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            raise DatasetError(f"{path} is not a tar: its first 512 bytes are not a tar header "
                               f"(they start {block[:16]!r})") from None


def _check_end(path: str, f, offset: int, end: int) -> None:
    """tarfile ends an archive at the first header it cannot read, past the first one silently:
    every member after a damaged header would vanish. The end is two zero blocks (or the
    file's end); anything else there is damage, named with its offset."""
    block = os.pread(f.fileno(), 512, offset) if offset < end else b""
    if block.strip(b"\0"):
        raise DatasetError(f"{path}: the header at offset {offset} is damaged (neither a "
                           "member's header nor the archive's end): the members after it cannot "
                           "be read; copy the archive again")
