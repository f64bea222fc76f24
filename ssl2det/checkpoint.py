"""Checkpoints in detectron2's layout (model_NNNNNNN.pth, last_checkpoint, model_final.pth) that
survive kills: written atomically, and a resume that finds the newest one damaged falls back to
the one before it. Mixed into both stages' fvcore / detectron2 checkpointers."""

import glob
import os
import re

import torch
from detectron2.engine import HookBase

from .io import CheckpointError, UnreadableCheckpointError, atomic_write

#: the checkpoints this folder's runs wrote, one name a line: all that pruning may remove
WRITTEN = "checkpoints_written.txt"


def _record_written(save_dir: str, basename: str) -> None:
    with open(os.path.join(save_dir, WRITTEN), "a") as f:
        f.write(basename + "\n")
        f.flush()
        os.fsync(f.fileno())


def written_checkpoints(save_dir: str) -> set:
    try:
        with open(os.path.join(save_dir, WRITTEN)) as f:
            return {line.strip() for line in f if line.strip()}
    except OSError:
        return set()


class AtomicSaveMixin:
    """For fvcore / detectron2 checkpointers: checkpoints and `last_checkpoint` written
    atomically (see `atomic_write`), and `resume_or_load` past damaged checkpoints. `resuming`
    is True while a checkpoint of this run is loaded to continue it."""

    resuming = False

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
        _record_written(self.save_dir, basename)
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
        self.resuming = True  # a resume must load everything (see TransferCheckpointer)
        try:
            for candidate in candidates:
                try:
                    return self.load(candidate)
                except UnreadableCheckpointError as e:
                    self.logger.warning(f"{e} Trying the previous checkpoint.")
        finally:
            self.resuming = False
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


def prune_periodic_checkpoints(save_dir: str, keep: int, prefix: str = "model") -> list:
    """Remove all but the newest `keep` periodic checkpoints (PREFIX_NNNNNNN.pth) that this
    folder's runs wrote (WRITTEN: a user's file of that name, a link, a copy from elsewhere are
    neither removed nor counted), never the one `last_checkpoint` names and never
    PREFIX_final.pth; `keep` 0 keeps all. Run after a save completes, so the checkpoint a
    resume would read is always whole. Returns what was removed. (fvcore's `max_to_keep`
    forgets the checkpoints of earlier runs of a resumed job; the ledger does not.)"""
    if keep <= 0:
        return []
    try:
        with open(os.path.join(save_dir, "last_checkpoint")) as f:
            named = f.read().strip()
    except OSError:
        named = ""
    ours = written_checkpoints(save_dir)
    periodic = sorted(p for p in glob.glob(os.path.join(save_dir, f"{prefix}_*.pth"))
                      if re.fullmatch(rf"{re.escape(prefix)}_\d+\.pth", os.path.basename(p))
                      and os.path.basename(p) in ours and os.path.isfile(p)
                      and not os.path.islink(p))
    removed = [p for p in periodic[:-keep] if os.path.basename(p) != named]
    for path in removed:
        os.remove(path)
    return removed


class KeepLastCheckpoints(HookBase):
    """A hook after detectron2's PeriodicCheckpointer: the periodic checkpoints pruned to the
    newest `keep` after each period's save (an R50 pretraining checkpoint is 336 MB; a
    200-epoch ImageNet run would otherwise leave ~100). Rank 0 only writes, so it alone prunes."""

    def __init__(self, save_dir: str, period: int, keep: int, main_process: bool = True):
        self.save_dir, self.period, self.keep, self.main = save_dir, period, keep, main_process

    def after_step(self):
        if self.main and (self.trainer.iter + 1) % self.period == 0:
            prune_periodic_checkpoints(self.save_dir, self.keep)
