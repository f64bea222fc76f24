"""The pipeline's stages: what each kind runs, what it produces, what its outputs are made from.

A stage is a command (an entry point of one of the packages) whose outputs land in `folder`. It
says how its processes start (`starts`), and an executor (transfer/executors) turns that into
its own commands: one process per rank (`RANKS`: our launcher locally, one task per rank on a
scheduler), one launcher per machine that starts a worker per GPU (`LAUNCHER`: detectron2's
`launch`), or a single process (`SINGLE`). A stage records what its outputs are made from (its
`inputs`, hashed by `fingerprints`) in its record (transfer/record.py); the plan
(transfer/plan.py) skips a complete stage only while that hash still holds.
"""

import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from pretrain.config import PROBE_KEYS, load_config
from pretrain.config import RUNTIME_KEYS as PRETRAIN_RUNTIME_KEYS
from pretrain.eval.linear import PROTOCOLS
from pretrain.launch import launch_command
from ssl2det.config import config_values, key_in

from .config import RUNTIME_KEYS as TRANSFER_RUNTIME_KEYS
from .config import merge_config
from .layout import RANDOM
from .record import StageRecord
from .spec import replicate_name

#: how a stage's processes start (the module docstring)
RANKS, LAUNCHER, SINGLE = "one process per rank", "one launcher per machine", "one process"


def _fingerprint(inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _results_values(cfg, runtime_keys) -> dict:
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


def _final_checkpoint_done(folder: Path) -> bool:
    last = folder / "last_checkpoint"
    return last.is_file() and last.read_text().strip() == "model_final.pth" and (
        folder / "model_final.pth").is_file()


class PretrainStage(Stage):
    kind, starts = "pretrain", RANKS

    def __init__(self, spec, run, replicate: int = 0):
        self.name = replicate_name(run.name, replicate)
        super().__init__(spec.layout.pretrain(self.name), f"pretrain {self.name}",
                         ("pretrain", self.name))
        self.run_spec, self.replicate = run, replicate

    def is_complete(self):
        return _final_checkpoint_done(self.folder)

    @functools.cached_property
    def seed(self) -> int:
        """Replicate r runs with its config's SEED + r (the config is read once, not for every
        command line the stage writes)."""
        return load_config(self.run_spec.config, self.run_spec.overrides).SEED + self.replicate

    def opts(self):
        seed = ["SEED", str(self.seed)] if self.replicate else []
        return [*self.run_spec.overrides, *seed, "OUTPUT_DIR", str(self.folder)]

    def command(self, processes=1, launcher_flags=()):
        return launch_command(self.run_spec.config, processes, resume=True, opts=self.opts())

    @functools.cached_property
    def config(self):
        return load_config(self.run_spec.config, self.opts())

    def inputs(self, upstream):
        return {"config": _results_values(self.config, PRETRAIN_RUNTIME_KEYS)}

    def effective_config(self):
        return self.config.dump()


class ConvertStage(Stage):
    """A pretraining run's encoder, or an external backbone's file, in detectron2's format."""

    kind = "convert"

    def __init__(self, spec, name: str, source: Path, upstream_key=None):
        self.target = spec.layout.converted(name)
        super().__init__(self.target.parent, f"convert {name}", ("convert", name),
                         record=self.target.with_suffix(".stage.json"))
        self.outputs = [self.target]
        self.name, self.source, self.upstream_key = name, source, upstream_key

    @property
    def log_path(self) -> Path:  # conversions share a folder, and may run at once (SLURM)
        return self.target.with_suffix(".log")

    def upstream_keys(self):
        return [self.upstream_key] if self.upstream_key else []

    def is_complete(self):
        return self.target.is_file()

    def command(self, processes=1, launcher_flags=()):
        return [sys.executable, "-m", "transfer.convert", self.source, self.target]

    def inputs(self, upstream):
        if self.upstream_key:
            return {"pretrain": upstream[self.upstream_key]}
        try:  # a file the user gave: its path, size and time stand for its content
            stat = os.stat(self.source)
            return {"file": str(self.source), "size": stat.st_size, "mtime": stat.st_mtime_ns}
        except OSError:
            return {"file": str(self.source)}


class ProbeStage(Stage):
    """kNN and linear-probe top-1 of a pretraining stage's frozen encoder, or, with `random`, of
    a randomly initialised encoder of that run's architecture (the baseline)."""

    kind = "probe"

    def __init__(self, spec, pretrain: PretrainStage, random: bool = False):
        self.name = RANDOM if random else pretrain.name
        super().__init__(spec.layout.probe(self.name), f"probe {self.name}", ("probe", self.name))
        self.spec, self.settings = spec, spec.probe
        self.result = spec.layout.probe_result(self.name)
        self.pretrain, self.run_spec = None if random else pretrain, pretrain.run_spec
        # the probe on augmented images splits its batches over the ranks, as pretraining
        # does; the probes on features computed once run in one process
        self.starts = RANKS if PROTOCOLS[self.settings.linear_protocol].on_images else SINGLE
        if random:
            self.encoder = ["--random-init", "--config-file", self.run_spec.config,
                            *self.run_spec.overrides]
        else:  # the run's own config.yaml, beside its checkpoint
            self.encoder = ["--checkpoint", spec.layout.pretrain_checkpoint(self.name)]

    def upstream_keys(self):
        return [("pretrain", self.name)] if self.pretrain else []

    def is_complete(self):
        return self.result.is_file()

    def command(self, processes=1, launcher_flags=()):
        s = self.settings
        probe = ["-m", "pretrain.eval", "probe", "--train-root", s.train_root, "--val-root",
                 s.val_root, "--epochs", s.linear_epochs, "--protocol", s.linear_protocol,
                 "--output", self.result, *self.encoder, *s.overrides]
        if processes > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(processes), *probe]
        return [sys.executable, *probe]

    def inputs(self, upstream):
        s = self.settings
        config = (self.pretrain.config if self.pretrain else
                  load_config(self.run_spec.config, self.run_spec.overrides))
        return {"encoder": upstream[("pretrain", self.name)] if self.pretrain else RANDOM,
                "config": {k: v for k, v in config_values(config).items()
                           if key_in(k, PROBE_KEYS)},
                "probe": [s.train_root, s.val_root, s.linear_epochs, s.linear_protocol,
                          s.overrides]}


class TrainNetStage(Stage):
    """A `python -m transfer.train_net` run of a transfer task from one backbone, one seed."""

    starts = LAUNCHER

    def __init__(self, spec, task, backbone: str, replicate: int, folder: Path, label: str,
                 key: tuple):
        super().__init__(folder, label, key)
        self.spec, self.task, self.backbone, self.replicate = spec, task, backbone, replicate
        self.weights_from = spec.backbone_replicate(backbone, replicate)

    def command(self, processes=1, launcher_flags=()):
        # detectron2's flags before the KEY VALUE overrides, which end the command line
        return [sys.executable, "-m", "transfer.train_net", "--config-file", self.task.config,
                *self.flags(), "--num-gpus", max(1, processes), *launcher_flags,
                *self.spec.dataset_args, *self.task.overrides, "SEED", self.replicate,
                *self.extra_opts()]

    def flags(self) -> list:
        raise NotImplementedError

    def extra_opts(self) -> list:
        raise NotImplementedError

    @functools.cached_property
    def config(self):
        return merge_config(self.task.config, [*self.task.overrides, "SEED", str(self.replicate),
                                               *map(str, self.extra_opts())])

    def config_inputs(self):
        """The results-deciding config, with MODEL.WEIGHTS left to the upstream record."""
        return {"config": _results_values(self.config, (*TRANSFER_RUNTIME_KEYS, "MODEL.WEIGHTS")),
                "datasets": self.spec.dataset_args}

    def effective_config(self):
        return self.config.dump()


def _weights(spec, backbone: str) -> str:
    """MODEL.WEIGHTS for a backbone replicate: "" (random), a detectron2 .pkl given as is, or
    the converted file."""
    external = spec.external.get(backbone)
    if external and external.is_detectron2:
        return external.weights
    return spec.layout.weights_for(backbone)


class FinetuneStage(TrainNetStage):
    kind = "finetune"

    def __init__(self, spec, task, backbone, replicate=0):
        run = replicate_name(backbone, replicate)
        super().__init__(spec, task, backbone, replicate, spec.layout.finetune(task.name, run),
                         f"fine-tune {task.name} from {run}", ("finetune", task.name, run))

    def is_complete(self):
        return _final_checkpoint_done(self.folder)

    def upstream_keys(self):
        return [("convert", self.weights_from)]

    def extra_opts(self):
        # No evaluation here (DATASETS.TEST empty): the evaluate stage does it once.
        return ["MODEL.WEIGHTS", _weights(self.spec, self.weights_from),
                "DATASETS.TEST", "()", "OUTPUT_DIR", self.folder]

    def flags(self):
        return ["--resume"]

    def inputs(self, upstream):
        return {**self.config_inputs(),
                "backbone": upstream.get(("convert", self.weights_from), self.weights_from)}


class EvaluateStage(TrainNetStage):
    kind = "evaluate"

    def __init__(self, spec, task, backbone, replicate=0):
        run = replicate_name(backbone, replicate)
        super().__init__(spec, task, backbone, replicate, spec.layout.evaluate(task.name, run),
                         f"evaluate {task.name} from {run}", ("evaluate", task.name, run))
        self.weights = spec.layout.finetune(task.name, run) / "model_final.pth"
        self.finetune_key = ("finetune", task.name, run)

    def is_complete(self):
        return (self.folder / "final_metrics.json").is_file()

    def upstream_keys(self):
        return [self.finetune_key]

    def extra_opts(self):
        return ["MODEL.WEIGHTS", self.weights, "OUTPUT_DIR", self.folder]

    def flags(self):
        return ["--eval-only", "--save-predictions", self.spec.predictions]

    def inputs(self, upstream):
        return {**self.config_inputs(), "predictions": self.spec.predictions,
                "finetune": upstream[self.finetune_key]}


class ReportStage(Stage):
    """The report (transfer/report), made from every other stage's outputs, after all of them:
    `python -m transfer.pipeline RUN_FILE --report-only`."""

    kind = "report"
    reruns_with_upstream = replaceable_when_queued = True

    def __init__(self, spec, stages):
        root = spec.layout.root
        super().__init__(root, "report", ("report",), record=root / "report.stage.json")
        self.spec, self.path = spec, spec.layout.report(spec.report_name)
        self.outputs = [self.path]
        self.stages = list(stages)

    @property
    def log_path(self) -> Path:  # the run's root folder holds the other stages' folders
        return self.folder / "report.log"

    def upstream_keys(self):
        return [stage.key for stage in self.stages]

    def is_complete(self):
        return self.path.is_file()

    def set_aside(self) -> list:
        return []  # its run rewrites the report whole

    def command(self, processes=1, launcher_flags=()):
        return [sys.executable, "-m", "transfer.pipeline", self.spec.layout.run_file,
                "--output-dir", self.spec.layout.root, "--report-only"]

    def inputs(self, upstream):
        # (which stages are kept stale is not an input: the plan runs the report again
        # whenever one is, as when one runs)
        return {"stages": {"/".join(key): upstream[key] for key in self.upstream_keys()},
                "name": self.spec.report_name}


def build_stages(spec) -> list:
    """Every stage of the run, each after the stages it reads, the report last."""
    pretrain = [PretrainStage(spec, r, k) for r in spec.pretrain for k in range(r.repeats)]
    used = {spec.backbone_replicate(b, k) for task in spec.transfer for b in task.backbones
            for k in range(task.repeats)}
    stages = list(pretrain)
    stages += [ConvertStage(spec, p.name, spec.layout.pretrain_checkpoint(p.name), p.key)
               for p in pretrain if p.name in used]
    stages += [ConvertStage(spec, b.name, Path(b.weights)) for b in spec.external.values()
               if b.name in used and not b.is_detectron2]
    if spec.probe:
        stages += [ProbeStage(spec, p) for p in pretrain]
        if spec.probe.baseline and pretrain:
            stages.append(ProbeStage(spec, pretrain[0], random=True))
    for task in spec.transfer:
        stages += [FinetuneStage(spec, task, b, k) for b in task.backbones
                   for k in range(task.repeats)]
    for task in spec.transfer:
        stages += [EvaluateStage(spec, task, b, k) for b in task.backbones
                   for k in range(task.repeats)]
    stages.append(ReportStage(spec, stages))
    keys = {stage.key for stage in stages}
    for stage in stages:
        stage.requires = [key for key in stage.upstream_keys() if key in keys]
    return stages


def fingerprints(stages) -> dict:
    """{stage key: hash of its inputs}, upstream hashes included: a change reaches every stage
    that depends on it."""
    hashes = {}
    for stage in stages:
        hashes[stage.key] = _fingerprint(stage.inputs(hashes))
    return hashes


def stale_stages(stages, hashes) -> list:
    """Keys of the complete stages made from other inputs than the run file's now (a stage
    with no record was made outside the pipeline and is taken as it is)."""
    return [s.key for s in stages if s.key in hashes and s.is_complete()
            and s.record.hash not in (None, hashes[s.key])]
