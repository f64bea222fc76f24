"""A pipeline run file, read and checked (transfer/pipeline.py runs it; see its docstring for the
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

from ssl2det.config import read_yaml_mapping
from ssl2det.errors import UserError

from .layout import RANDOM, RunLayout


class PipelineError(UserError, ValueError):
    """A bad run file or a failed stage; the message says which and where the log is."""


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
    num_gpus: int = 0  # > 1: pretraining through torchrun, train_net --num-gpus
    external: dict = field(default_factory=dict)  # name -> ExternalBackbone
    run_file: str = ""
    report_name: str = "report"  # REPORT.md, REPORT.html: run files sharing a folder differ

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


def _resolve(path: str, run_file: Path) -> str:
    """A path as given, else relative to the run file's folder or one of its parents."""
    if os.path.exists(path):
        return path
    folder = run_file.resolve().parent
    for base in (folder, *folder.parents):
        if (base / path).exists():
            return str(base / path)
    raise PipelineError(f"config not found: {path} (looked in . and above {folder})")


def _strings(values) -> list:
    return [str(v) for v in values or []]


def _positive(value, what, path) -> int:
    if not isinstance(value, int) or value < 1:
        raise PipelineError(f"{path}: {what} must be a whole number of at least 1, got {value!r}")
    return value


def load_spec(path: str, output_dir: str = None) -> PipelineSpec:
    run_file = Path(path)
    raw = read_yaml_mapping(path, "run file")
    allowed = {"output_dir", "datasets", "pretrain", "probe", "transfer", "report", "launch",
               "repeats", "backbones"}
    unknown = set(raw) - allowed
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    repeats = _positive(raw.get("repeats", 1), "repeats", path)
    try:
        pretrain = [PretrainRun(r["name"], _resolve(r["config"], run_file),
                                _strings(r.get("overrides")),
                                _positive(r.get("repeats", 1), f"repeats of {r['name']}", path))
                    for r in raw.get("pretrain", [])]
        external = {b["name"]: ExternalBackbone(b["name"], str(b["weights"]),
                                                str(b.get("label", "")), str(b.get("source", "")))
                    for b in raw.get("backbones", [])}
        names = [r.name for r in pretrain] + list(external)
        transfer = [TransferTask(
            t["name"], _resolve(t["config"], run_file), _strings(t.get("overrides")),
            t.get("backbones", [RANDOM, *names]),
            _positive(t.get("repeats", repeats), f"repeats of {t['name']}", path),
            str(t.get("baseline", "")), str(t.get("metric", "")),
            [Reference(str(r["label"]), str(r["metric"]), float(r["value"]), str(r["source"]))
             for r in t.get("reference", [])])
            for t in raw.get("transfer", [])]
        probe = raw.get("probe")
        probe = ProbeSettings(str(probe["train_root"]), str(probe["val_root"]),
                              int(probe.get("linear_epochs", 100)), bool(probe.get("baseline", True)),
                              str(probe.get("linear_protocol", "ours")),
                              _strings(probe.get("overrides"))) if probe else None
    except (KeyError, TypeError, ValueError) as e:
        raise PipelineError(f"{path}: every pretrain/transfer entry needs 'name' and 'config', "
                            "every backbones entry 'name' and 'weights', every reference "
                            "'label', 'metric', 'value' (a number) and 'source', probe needs "
                            f"'train_root' and 'val_root' ({type(e).__name__}: {e})") from None
    clash = set(external) & {r.name for r in pretrain} | set(external) & {RANDOM}
    if clash:
        raise PipelineError(f"{path}: backbone names {sorted(clash)} are used twice")
    for task in transfer:
        bad = [b for b in task.backbones if b != RANDOM and b not in names]
        if bad:
            raise PipelineError(f"{path}: transfer '{task.name}' names backbones {bad} that no "
                                f"pretrain or backbones entry defines (known: {sorted(names)} "
                                f"and '{RANDOM}')")
        if task.baseline and task.baseline not in task.backbones:
            raise PipelineError(f"{path}: transfer '{task.name}' has baseline "
                                f"'{task.baseline}', which is not one of its backbones")
    datasets = raw.get("datasets", {}) or {}
    args = []
    for name, json_file, image_dir in datasets.get("register_coco", []):
        args += ["--register-coco", name, json_file, image_dir]
    for name, voc_dir, split in datasets.get("register_voc", []):
        args += ["--register-voc", name, voc_dir, split]
    if datasets.get("voc_classes"):
        args += ["--voc-classes", str(datasets["voc_classes"])]
    out = Path(output_dir or raw.get("output_dir") or "output/pipeline")
    report = raw.get("report") or {}
    return PipelineSpec(RunLayout(out), pretrain, transfer, args, probe,
                        int(report.get("predictions", 3)), run_file.read_text(),
                        int((raw.get("launch") or {}).get("num_gpus", 0)), external, str(run_file),
                        str(report.get("name", "report")))
