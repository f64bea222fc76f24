"""Checkpoints in detectron2's layout (model_NNNNNNN.pth, last_checkpoint, model_final.pth),
written atomically and loaded with `weights_only=True`, plus the run state a resume needs.

A resume that finds the newest checkpoint damaged (a disk error, a copy cut short) warns and
falls back to the one before it; temporary files of a write that was killed are removed.
"""

import glob
import logging
import os
import pickle
import random
import re
import tempfile

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.checkpoint import Checkpointer

from .distributed import get_rank, get_world_size

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


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


class AtomicSaveMixin:
    """For fvcore / detectron2 checkpointers: checkpoints and `last_checkpoint` written
    atomically (see `atomic_write`)."""

    def save(self, name: str, **kwargs) -> None:
        for obj in self.checkpointables.values():  # collectives: every rank takes part
            if hasattr(obj, "gather"):
                obj.gather()
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        self.logger.info(f"Saving checkpoint to {os.path.join(self.save_dir, basename)}")
        atomic_write(os.path.join(self.save_dir, basename), lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict:
        """With `resume` and a checkpoint in save_dir: load the newest checkpoint that can be
        read, warning about every newer one that cannot (it is left in place for inspection and
        overwritten when its iteration is saved again); otherwise load `path`'s weights only
        (fvcore's behaviour). A checkpoint of another run is refused, not skipped."""
        if resume:  # also when the kill came during the very first write: no checkpoint yet
            self._remove_partial_writes()
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        candidates = self._resume_candidates()
        for candidate in candidates:
            try:
                return self.load(candidate)
            except UnreadableCheckpointError as e:
                self.logger.warning(f"{e} Trying the previous checkpoint.")
        raise CheckpointError(f"no usable checkpoint in {self.save_dir} (tried "
                              f"{', '.join(map(os.path.basename, candidates)) or 'none'}); "
                              "start a new run without --resume or with another OUTPUT_DIR")

    def _resume_candidates(self) -> list:
        """The checkpoint named in last_checkpoint, then every model_*.pth, newest first."""
        def iteration(path):
            digits = re.findall(r"\d+", os.path.basename(path))
            return int(digits[-1]) if digits else float("inf")  # model_final.pth: the newest

        last = self.get_checkpoint_file()
        others = sorted(set(glob.glob(os.path.join(self.save_dir, "model_*.pth"))) - {last},
                        key=iteration, reverse=True)
        return ([last] if os.path.isfile(last) else []) + others

    def _remove_partial_writes(self) -> None:
        """Temporary files left by a process killed inside `atomic_write`."""
        if not self.save_to_disk:
            return
        for tmp in glob.glob(os.path.join(self.save_dir, ".*.tmp")):
            self.logger.warning(f"removing {tmp}, an unfinished write of a killed run")
            os.remove(tmp)


class AtomicCheckpointer(AtomicSaveMixin, Checkpointer):
    """fvcore's Checkpointer with atomic saves and safe loads (weights_only=True).

    With `expected_meta`, a loaded checkpoint must carry the same `run_state.meta` (format,
    architecture, method): a resume refuses another run's file instead of half-loading it.
    """

    def __init__(self, *args, expected_meta: dict = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected_meta = expected_meta

    def _load_file(self, f: str) -> dict:
        data = load_checkpoint_file(f)
        if self.expected_meta:
            _check_meta(f, data, self.expected_meta)
        return data


def _check_meta(path, data, expected):
    run_state = data.get("run_state")
    saved = run_state.get("meta", {}) if isinstance(run_state, dict) else {}
    if saved.get("format") != expected.get("format"):
        raise CheckpointError(f"{path} is not a checkpoint of this project's pretraining; "
                              "--resume needs the OUTPUT_DIR of an earlier run of the same config")
    different = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if different:
        raise CheckpointError(f"{path} comes from a different run: " + ", ".join(
            f"{k} was {a!r}, now {b!r}" for k, (a, b) in different.items())
            + ". Use a new OUTPUT_DIR, or the config of that run.")


class RunState:
    """The state besides model and optimiser that an exact resume needs: every rank's global
    RNGs (the augmentation RNG is seeded per sample, see data/datasets.py), plus what the run
    was, so that a converter or a resume can check it reads the right thing."""

    def __init__(self, meta: dict):
        self.meta = meta
        self._ranks = []

    def gather(self):
        """Collect every rank's RNG state (called on all ranks before a save)."""
        local = _rng_state()
        if get_world_size() == 1:
            self._ranks = [local]
        else:
            self._ranks = [None] * get_world_size()
            dist.all_gather_object(self._ranks, local)

    def state_dict(self):
        return {"meta": self.meta, "ranks": self._ranks or [_rng_state()]}

    def load_state_dict(self, state):
        ranks = state["ranks"]
        if len(ranks) != get_world_size():
            logger.warning(f"the checkpoint holds the RNG state of {len(ranks)} processes, this "
                           f"run has {get_world_size()}: random streams will differ from the "
                           "uninterrupted run")
        _set_rng_state(ranks[min(get_rank(), len(ranks) - 1)])


def _rng_state():
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]),
             "python": _to_builtin(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32),
                         state["numpy_pos"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _to_builtin(x):
    return list(x) if isinstance(x, tuple) and len(x) > 10 else (
        [_to_builtin(v) for v in x] if isinstance(x, tuple) else x)
