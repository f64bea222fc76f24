"""Pretraining checkpoints: fvcore's Checkpointer with atomic saves, safe loads
(`weights_only=True`), fallback past damaged files (ssl2det.checkpoint), a check that the file
belongs to this run, and the run state an exact resume needs (RNG states)."""

import logging
import random

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.checkpoint import Checkpointer

from ssl2det.checkpoint import AtomicSaveMixin
from ssl2det.config import describe_changes, resume_changes
from ssl2det.distributed import get_rank, get_world_size
from ssl2det.io import CheckpointError, load_checkpoint_file

from ..checkpoint_format import FORMAT, saved_meta
from ..config import RESUMABLE_CHANGES

logger = logging.getLogger(__name__)


class AtomicCheckpointer(AtomicSaveMixin, Checkpointer):
    """fvcore's Checkpointer with atomic saves and safe loads (weights_only=True).

    With `expected_meta`, a loaded checkpoint must carry the same `run_state.meta` (format,
    architecture, method): a resume refuses another run's file instead of half-loading it. With
    `config` too, the run's config must equal the one the checkpoint was written with, except
    for the keys in RESUMABLE_CHANGES (listed in a warning); any other change is refused, naming
    each key with its old and new value.
    """

    def __init__(self, *args, expected_meta: dict = None, config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected_meta, self.config = expected_meta, config

    def _load_file(self, f: str) -> dict:
        data = load_checkpoint_file(f)
        if self.expected_meta:
            _check_meta(f, saved_meta(data), self.expected_meta)
        saved_config = (data.get("run_state") or {}).get("config")
        if self.config is not None and saved_config:
            allowed, refused = resume_changes(saved_config, self.config, RESUMABLE_CHANGES)
            if refused:
                raise CheckpointError(
                    f"{f} was written with another config, and --resume continues a run, it "
                    f"cannot change it: {describe_changes(refused)}. Use that run's config, or "
                    "a new OUTPUT_DIR for a new run.")
            if allowed:
                logger.warning(f"resuming with changed settings: {describe_changes(allowed)}")
        return data


def _check_meta(path, saved, expected):
    if saved.get("format") != FORMAT:
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
    was (its meta and config), so that a converter or a resume can check it reads the right
    thing."""

    def __init__(self, meta: dict, config_dump: str = ""):
        self.meta, self.config_dump = meta, config_dump
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
        return {"meta": self.meta, "config": self.config_dump,
                "ranks": self._ranks or [_rng_state()]}

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
