"""A run's output folder, claimed by one run at a time: created with a clear error when it cannot
be, and locked with a POSIX lock on OUTPUT_DIR/.lock. The kernel releases it when its holder
dies, so a killed run never leaves a stale lock; and unlike an flock it is not inherited by
forked children (DataLoader workers), which may outlive a killed run by a few seconds."""

import fcntl
import os
import sys

from .errors import ConfigError, UserError

LOCK_FILE = ".lock"
_held = {}  # folder -> the open lock file, kept for the life of the process


class OutputDirBusyError(UserError):
    """Another live process holds the output folder."""

    exit_code = 2


def make_output_dir(folder: str, key: str = "OUTPUT_DIR") -> str:
    """Create `folder` (and its parents); a ConfigError naming `key` when it is a file or cannot
    be created. Returns its absolute path."""
    folder = os.path.abspath(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{key} {folder} is a file (or lies under one), not a folder; choose "
                          f"another {key}") from None
    except OSError as e:
        raise ConfigError(f"{key} {folder} cannot be created ({e.strerror}); choose another "
                          f"{key}") from None
    return folder


def _busy(key, folder, holder) -> str:
    return (f"{key} {folder} is in use by {holder}. Two runs must not write one folder: wait "
            f"for it to finish, stop it, or use another {key}.")


def output_dir_holder(folder: str):
    """Who holds `folder`'s lock (its line in the lock file), or None when nobody does; reads
    only, creates nothing."""
    path = os.path.join(os.path.abspath(folder), LOCK_FILE)
    if os.path.abspath(folder) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None  # free (the lock is released as the file closes)
    except OSError:
        return os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def refuse_if_busy(folder: str, key: str = "OUTPUT_DIR") -> None:
    """An OutputDirBusyError, naming the holder, when another live process holds `folder`."""
    holder = output_dir_holder(folder)
    if holder:
        raise OutputDirBusyError(_busy(key, os.path.abspath(folder), holder))


def claim_output_dir(folder: str, key: str = "OUTPUT_DIR") -> None:
    """Create `folder` and hold its lock until this process ends (idempotent). A second run on
    the same folder gets an OutputDirBusyError naming the holder's pid, before it writes
    anything: two runs writing one folder would interleave checkpoints and metrics, and a resume
    would remove the live run's unfinished writes."""
    folder = make_output_dir(folder, key)
    if folder in _held:
        return
    try:
        fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ConfigError(f"{key} {folder} cannot be written ({e.strerror}); choose a folder "
                          f"you can write as {key}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # EAGAIN / EACCES: held by another process
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise OutputDirBusyError(_busy(key, folder, holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
    _held[folder] = fd
