"""Files written atomically, and checkpoints read without running code from them."""

import glob
import os
import pickle
import re
import socket
import tempfile

from .errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file and the fix."""

    exit_code = 2


class UnreadableCheckpointError(CheckpointError):
    """The file cannot be unpickled safely: truncated, not a checkpoint, or carrying code."""


class FileWriteError(UserError, OSError):
    """A file could not be written (a full disk, a size limit, no permission); nothing partial
    was left behind."""


class UnwritableFolderError(FileWriteError):
    """The folder a file was to go to cannot be written (read-only, not ours, not there): the
    path given is wrong, exit code 2."""

    exit_code = 2


class _RecordingFile:
    """The file handed to a writer, keeping the OS error a write hit: torch.save reports a full
    disk only as a generic RuntimeError."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _writer_tag() -> str:
    """Names the writing process in its temporary file: host and pid (a shared file system is
    written from several hosts, whose pids mean nothing here)."""
    return f"{socket.gethostname()}.pid{os.getpid()}"


def remove_dead_writers_files(path: str) -> list:
    """Remove the temporary files that writers of `path` on this host killed inside
    `atomic_write` left (their process is gone); returns them. A live writer's file, and any
    other host's, is left alone."""
    folder, name = os.path.split(os.path.abspath(path))
    host = socket.gethostname()
    removed = []
    pattern = f".{glob.escape(name)}.{glob.escape(host)}.pid*.tmp"
    for tmp in glob.glob(os.path.join(glob.escape(folder), pattern)):
        pid = re.match(r"pid(\d+)\.", os.path.basename(tmp)[len(name) + len(host) + 3:])
        if pid and not _pid_alive(int(pid.group(1))):
            try:
                os.remove(tmp)
                removed.append(tmp)
            except OSError:
                pass
    return removed


def atomic_write(path: str, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it onto
    `path`: a reader (or a resumed run) sees the old file or the new one, never half of one.
    The file gets the mode a plain `open` would give it (umask). A write that fails on the disk
    (full, size limit, a folder it may not write) is a FileWriteError naming `path`, and the
    temporary file is removed; one a killed writer left (its name carries the writer's pid) is
    removed by the next write of `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    remove_dead_writers_files(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp",
                                   prefix=f".{os.path.basename(path)}.{_writer_tag()}.")
    except OSError as e:
        raise UnwritableFolderError(f"cannot write {path}: {e.strerror or e} (in {folder}); "
                                    "choose a folder you can write, then run again.") from None
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
    recording = None
    try:
        with os.fdopen(fd, "wb") as f:
            recording = _RecordingFile(f)
            write(recording)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = e if isinstance(e, OSError) else recording.error if recording else None
        if cause is None or not isinstance(e, Exception):
            raise
        raise FileWriteError(f"cannot write {path}: {cause.strerror or cause}. Nothing partial was "
                             "left (an earlier version of the file is unchanged); free disk space "
                             "or choose another folder, then run again.") from None


def _umask() -> int:
    """This process's umask, read without changing it (os.umask can only set it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def load_checkpoint_file(path: str) -> dict:
    """torch.load with weights_only=True (no code from the file runs), with clear errors."""
    import torch  # (here: the planner, every SLURM job's wrapper, imports this module)

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UnreadableCheckpointError(f"{path}: no such file") from None
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in first:  # (torch's advice to load unsafely: not ours)
            first = ("it holds objects that are not tensors and plain data: a pickled model, "
                     "or code")
        raise UnreadableCheckpointError(
            f"{path} cannot be loaded as a PyTorch checkpoint ({first}). It is truncated, not a "
            "checkpoint, or a pickle that would run code (refused: checkpoints are loaded with "
            "weights_only=True). Pick another file.") from None
    if not isinstance(data, dict):
        raise UnreadableCheckpointError(f"{path} holds a {type(data).__name__}, not a checkpoint dict")
    return data


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays; refuses every other global
    (a pickle that would construct arbitrary objects can run code)."""

    ALLOWED = {("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def check_weights_pickle(path: str) -> None:
    """Raise UnreadableCheckpointError unless `path` is a pickle of plain data and numpy arrays
    (detectron2's .pkl weights, our converter's output). detectron2 loads .pkl files with plain
    `pickle.load`; calling this first keeps a code-carrying file from being unpickled."""
    try:
        with open(path, "rb") as f:
            _ArraysOnlyUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:
        raise UnreadableCheckpointError(
            f"{path} is not a weights pickle ({e}). It is truncated, or carries code (refused: "
            ".pkl weights may hold only numpy arrays). Pick another file.") from None
