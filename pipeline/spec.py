"""A pipeline run file, read and checked (pipeline/cli.py runs it; see its docstring for the
format). Only data here: what runs, with which seeds, from which weights, against which
published numbers.

Seeds. `repeats: N` (top level, or per pretrain / transfer entry) runs an entry N times with the
seeds 0..N-1 (pretraining: its config's SEED + r). Replicate r of an entry NAME is named NAME
for r = 0 and NAME-seedR after (`replicate_name`), so a run file without repeats keeps the
folders it always had. Fine-tuning replicate k starts from replicate k mod P of a backbone
pretrained P times (paired seeds); a transfer task repeats `repeats` times, by default the top
level's. Pretraining repeats only where its entry asks.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from .layout import RANDOM, RunLayout
from .run_file import Launch, PipelineError, RunFileError, read_run_file

__all__ = ["PipelineError", "RunFileError", "load_spec", "replicate_name"]


def replicate_name(name: str, replicate: int) -> str:
    return name if replicate == 0 else f"{name}-seed{replicate}"


@dataclass
class PretrainRun:
    name: str
    config: str
    overrides: list = field(default_factory=list)
    repeats: int = 1

    def replicates(self) -> list:
        return [replicate_name(self.name, r) for r in range(self.repeats)]


@dataclass
class ExternalBackbone:
    """Weights from a file: a torchvision ResNet state dict, a MoCo / BYOL / PyContrast /
    solo-learn checkpoint (converted by transfer/convert.py), or a detectron2 .pkl (used as is)."""

    name: str
    weights: str
    label: str = ""  # shown in the report, e.g. "supervised ImageNet (torchvision)"
    source: str = ""  # where the file came from

    @property
    def is_detectron2(self) -> bool:
        return self.weights.endswith(".pkl")


@dataclass
class Reference:
    """A published number to read ours against, never mixed with measured cells."""

    label: str
    metric: str
    value: float
    source: str


@dataclass
class TransferTask:
    name: str
    config: str
    overrides: list = field(default_factory=list)
    backbones: list = field(default_factory=list)
    repeats: int = 1
    baseline: str = ""  # the backbone the others are compared with, seed by seed
    metric: str = ""  # the headline metric of the comparison and the chart ("" = the first)
    references: list = field(default_factory=list)


@dataclass
class ProbeSettings:
    """Frozen-encoder evaluation of the pretraining runs (pretrain/eval)."""

    train_root: str
    val_root: str
    linear_epochs: int = 100
    baseline: bool = True  # also probe a randomly initialised encoder (named RANDOM)
    linear_protocol: str = "ours"  # or "infocl" (pretrain/eval/linear.py)
    overrides: list = field(default_factory=list)


@dataclass
class PipelineSpec:
    layout: RunLayout
    pretrain: list
    transfer: list
    dataset_args: list
    probe: ProbeSettings = None
    predictions: int = 3
    source: str = ""
    external: dict = field(default_factory=dict)  # name -> ExternalBackbone
    run_file: str = ""
    report_name: str = "report"  # REPORT.md, REPORT.html: run files sharing a folder differ
    launch: Launch = None  # where the stages run (pipeline/executors/), as the run file says
    #: the checked run file itself (pipeline/run_file.py), for the sections a stage kind reads
    #: as they are
    entries: object = None

    def pretrain_run(self, name: str):
        return next((r for r in self.pretrain if r.name == name), None)

    def backbone_replicate(self, backbone: str, k: int) -> str:
        """The weights fine-tuning replicate k starts from: replicate k mod P of a backbone
        pretrained P times; external and random backbones have one."""
        run = self.pretrain_run(backbone)
        return replicate_name(backbone, k % run.repeats) if run else backbone

    def label(self, backbone: str) -> str:
        external = self.external.get(backbone)
        return f"{backbone} ({external.label})" if external and external.label else backbone


def _resolve(path: str, run_file: Path, where: str) -> str:
    """A path as given, else relative to the run file's folder or one of its parents."""
    if os.path.exists(path):
        return path
    folder = run_file.resolve().parent
    for base in (folder, *folder.parents):
        if (base / path).exists():
            return str(base / path)
    raise RunFileError(f"{run_file}: {where}: config not found: {path} (looked in . and above "
                       f"{folder})")


def load_spec(path: str, output_dir: str = None) -> PipelineSpec:
    """The run file at `path`, checked against its schema (pipeline/run_file.py)."""
    run_file = Path(path)
    raw = read_run_file(path)
    pretrain = [PretrainRun(r.name, _resolve(r.config, run_file, f"pretrain[{i}].config"),
                            list(r.overrides), r.repeats) for i, r in enumerate(raw.pretrain)]
    external = {b.name: ExternalBackbone(b.name, b.weights, b.label, b.source)
                for b in raw.backbones}
    names = [r.name for r in pretrain] + list(external)
    transfer = [TransferTask(
        t.name, _resolve(t.config, run_file, f"transfer[{i}].config"), list(t.overrides),
        list(t.backbones) if t.backbones is not None else [RANDOM, *names],
        t.repeats or raw.repeats, t.baseline, t.metric,
        [Reference(r.label, r.metric, float(r.value), r.source) for r in t.reference])
        for i, t in enumerate(raw.transfer)]
    p = raw.probe
    probe = ProbeSettings(p.train_root, p.val_root, p.linear_epochs, p.baseline,
                          p.linear_protocol, list(p.overrides)) if p else None
    d, args = raw.datasets, []
    for name, json_file, image_dir in d.register_coco:
        args += ["--register-coco", name, json_file, image_dir]
    for name, voc_dir, split in d.register_voc:
        args += ["--register-voc", name, voc_dir, split]
    for name, image_dir, label_dir in d.register_semseg:
        args += ["--register-semseg", name, image_dir, label_dir]
    if d.class_names():
        args += ["--voc-classes", ",".join(d.class_names())]
    out = Path(output_dir or raw.output_dir)
    return PipelineSpec(RunLayout(out), pretrain, transfer, args, probe, raw.report.predictions,
                        run_file.read_text(), external, str(run_file),
                        raw.report.name, raw.launch, raw)
