"""The pipeline's stages: what each kind runs, what it produces, what its outputs are made from,
what keeps it from running (its pre-flight problems). This module: the contract and what the
kinds share; one module per kind beside it.

A stage is a command (an entry point of one of the packages) whose outputs land in `folder`. It
says how its processes start (`starts`), and an executor (pipeline/executors) turns that into
its own commands: one process per rank (`RANKS`: our launcher locally, one task per rank on a
scheduler), one launcher per machine that starts a worker per GPU (`LAUNCHER`: detectron2's
`launch`), or a single process (`SINGLE`). A stage records what its outputs are made from (its
`inputs`, hashed by `fingerprints`) in its record (pipeline/record.py); the plan
(pipeline/plan.py) skips a complete stage only while that hash still holds.
"""

import hashlib
import json
import time
from pathlib import Path

from ssl2det.config import config_values, key_in

from ..record import StageRecord
from ..starts import SINGLE


def fingerprint(inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def results_values(cfg, runtime_keys) -> dict:
    """The config's values that decide a stage's results (not its runtime keys)."""
    return {k: v for k, v in config_values(cfg).items() if not key_in(k, runtime_keys)}


class Stage:
    """One step of the chain (the module docstring)."""

    kind = ""  # names the log file, FOLDER/KIND.log, and the launch: block's resources
    starts = SINGLE
    #: runs again whenever a stage it reads runs or is kept stale (the report: what ran, with
    #: what result, and what is out of date)
    reruns_with_upstream = False
    #: a queued run made from other inputs may be cancelled and replaced (it writes at its end)
    replaceable_when_queued = False

    def __init__(self, folder: Path, label: str, key: tuple, record: Path = None):
        self.folder, self.label, self.key = folder, label, key
        self.outputs = [folder]
        self.record = StageRecord(record or folder / "stage.json")
        self.requires = []  # the keys of the stages whose outputs this one reads (build_stages)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.kind}.log"

    def upstream_keys(self) -> list:
        """The stages this one reads, where they are part of the run."""
        return []

    def is_complete(self) -> bool:
        raise NotImplementedError

    def command(self, processes: int = 1, launcher_flags=()) -> list:
        """The command of one machine: `processes` ranks or GPUs there (RANKS: our launcher
        starts them when > 1; LAUNCHER: the stage's own launcher does), `launcher_flags` for a
        LAUNCHER stage that spans machines."""
        raise NotImplementedError

    def inputs(self, upstream: dict) -> dict:
        """What the outputs depend on; `upstream`: {stage key: hash} of the stages before."""
        raise NotImplementedError

    def effective_config(self) -> str:
        """The config the stage runs with, as text, for its record ("" for none)."""
        return ""

    def problems(self, checks) -> list:
        """What keeps this stage from running, one line each, found before any stage starts
        (pipeline/preflight.py; `checks`: pipeline.checks.Checks, what the stages share)."""
        return []

    def checkpoint_bytes(self, checks) -> float:
        """The disk its checkpoints will take (0 when it writes none or is complete); asked
        after `problems`."""
        return 0.0

    @classmethod
    def build(cls, spec, earlier: list) -> list:
        """The stages of this kind the run file asks for, given the stages of the kinds before
        (build_stages asks the kinds in the order of the graph)."""
        return []

    def checkpoints_gone(self) -> bool:
        """A training stage whose folder says it has checkpoints (last_checkpoint) but holds
        none (model_final.pth and every model_*.pth deleted, to reclaim disk): a resume has
        nothing to continue from, so the stage must start again."""
        return (self.folder / "last_checkpoint").is_file() and not any(
            self.folder.glob("model_*.pth"))

    def has_outputs(self) -> bool:
        return any(p.is_file() or (p.is_dir() and any(p.iterdir())) for p in self.outputs)

    def set_aside(self) -> list:
        """Move the outputs (and the record) of other inputs out of the way; returns where."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for path in [*self.outputs, self.record.path]:
            if path.exists():
                target = path.with_name(f"{path.name}.stale-{stamp}")
                path.rename(target)
                moved.append(target)
        return moved


def final_checkpoint_done(folder: Path) -> bool:
    last = folder / "last_checkpoint"
    return last.is_file() and last.read_text().strip() == "model_final.pth" and (
        folder / "model_final.pth").is_file()
