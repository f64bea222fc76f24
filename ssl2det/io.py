"""Files written atomically, and checkpoints read without running code from them."""

import os
import pickle
import tempfile

import torch

from .errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or weights file that cannot be used; the message names the file and the fix."""

    exit_code = 2


class UnreadableCheckpointError(CheckpointError):
    """The file cannot be unpickled safely: truncated, not a checkpoint, or carrying code."""


def atomic_write(path: str, write) -> None:
    """Call `write(file)` on a temporary file next to `path`, fsync it, then rename it onto
    `path`: a reader (or a resumed run) sees the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint_file(path: str) -> dict:
    """torch.load with weights_only=True (no code from the file runs), with clear errors."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UnreadableCheckpointError(f"{path}: no such file") from None
    except Exception as e:  # unpickling errors come in many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
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
