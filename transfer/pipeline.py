"""The whole chain as stages: pretrain -> convert -> fine-tune -> evaluate -> report.

A run is one YAML file (see configs/pipeline/demo.yaml):

    output_dir: output/demo
    datasets:                         # registered for every fine-tuning / evaluation
      register_voc: [[NAME, VOC_DIR, SPLIT], ...]
      register_coco: [[NAME, JSON, IMAGE_DIR], ...]
      voc_classes: raccoon
    pretrain:                         # one entry per pretraining run
      - {name: simclr, config: configs/..., overrides: [KEY, VALUE, ...]}
    transfer:                         # one entry per downstream task
      - {name: voc, config: configs/..., overrides: [...], backbones: [random, simclr]}
    launch: {num_gpus: 8}             # GPUs per stage (default: one process, GPU or CPU)
    report: {predictions: 3}

Each stage works in its own folder under output_dir and is skipped when its outputs are
complete; an interrupted stage resumes (pretraining and fine-tuning from their last checkpoint).
Stages run the tools as subprocesses; their logs are in each stage's folder.
"""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
RANDOM = "random"  # the backbone name of a randomly initialised encoder


class PipelineError(ValueError):
    """A bad run file or a failed stage; the message says which and where the log is."""


@dataclass
class PretrainRun:
    name: str
    config: str
    overrides: list = field(default_factory=list)


@dataclass
class TransferTask:
    name: str
    config: str
    overrides: list = field(default_factory=list)
    backbones: list = field(default_factory=list)


@dataclass
class PipelineSpec:
    output_dir: Path
    pretrain: list
    transfer: list
    dataset_args: list
    predictions: int = 3
    source: str = ""
    num_gpus: int = 0  # > 1: pretraining through tools/pretrain.sh, train_net --num-gpus


def _resolve(path: str) -> str:
    """A config path as given, else relative to the repository."""
    if os.path.exists(path):
        return path
    if (REPO / path).exists():
        return str(REPO / path)
    raise PipelineError(f"config not found: {path} (looked in . and {REPO})")


def load_spec(path: str, output_dir: str = None) -> PipelineSpec:
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"cannot read the run file {path}: {e}") from None
    allowed = {"output_dir", "datasets", "pretrain", "transfer", "report", "launch"}
    unknown = set(raw) - allowed
    if unknown:
        raise PipelineError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    try:
        pretrain = [PretrainRun(r["name"], _resolve(r["config"]), [str(x) for x in
                                                                   r.get("overrides", [])])
                    for r in raw.get("pretrain", [])]
        names = [r.name for r in pretrain]
        transfer = [TransferTask(t["name"], _resolve(t["config"]),
                                 [str(x) for x in t.get("overrides", [])],
                                 t.get("backbones", [RANDOM, *names]))
                    for t in raw.get("transfer", [])]
    except (KeyError, TypeError) as e:
        raise PipelineError(f"{path}: every pretrain/transfer entry needs 'name' and 'config' "
                            f"({e})") from None
    for task in transfer:
        bad = [b for b in task.backbones if b != RANDOM and b not in names]
        if bad:
            raise PipelineError(f"{path}: transfer '{task.name}' names backbones {bad} that no "
                                f"pretrain entry defines (known: {sorted(names)} and '{RANDOM}')")
    datasets = raw.get("datasets", {}) or {}
    args = []
    for name, json_file, image_dir in datasets.get("register_coco", []):
        args += ["--register-coco", name, json_file, image_dir]
    for name, voc_dir, split in datasets.get("register_voc", []):
        args += ["--register-voc", name, voc_dir, split]
    if datasets.get("voc_classes"):
        args += ["--voc-classes", str(datasets["voc_classes"])]
    out = Path(output_dir or raw.get("output_dir") or "output/pipeline")
    return PipelineSpec(out, pretrain, transfer, args,
                        int((raw.get("report") or {}).get("predictions", 3)),
                        Path(path).read_text(), int((raw.get("launch") or {}).get("num_gpus", 0)))


class Stage:
    kind = ""

    def __init__(self, spec: PipelineSpec, folder: Path, label: str):
        self.spec, self.folder, self.label = spec, folder, label

    def is_complete(self) -> bool:
        raise NotImplementedError

    def commands(self):
        raise NotImplementedError

    def run(self, echo):
        self.folder.mkdir(parents=True, exist_ok=True)
        log_path = self.folder / f"{self.kind}.log"
        env = dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning", PYTHON=sys.executable)
        for cmd in self.commands():
            argv = [str(c) for c in cmd]
            argv = [sys.executable, *argv] if argv[0].endswith(".py") else argv
            with open(log_path, "a") as log:
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
                for line in proc.stdout:
                    log.write(line)
                    echo(line)
                code = proc.wait()
            if code != 0:
                tail = "".join(log_path.read_text().splitlines(True)[-15:])
                raise PipelineError(f"stage {self.label} failed (exit {code}). Last lines of "
                                    f"{log_path}:\n{tail}\nFix the cause and run the same "
                                    "command again: finished stages are skipped, this one "
                                    "resumes.")


def _final_checkpoint_done(folder: Path) -> bool:
    last = folder / "last_checkpoint"
    return last.is_file() and last.read_text().strip() == "model_final.pth" and (
        folder / "model_final.pth").is_file()


class PretrainStage(Stage):
    kind = "pretrain"

    def __init__(self, spec, run: PretrainRun):
        super().__init__(spec, spec.output_dir / "pretrain" / run.name, f"pretrain {run.name}")
        self.run_spec = run

    def is_complete(self):
        return _final_checkpoint_done(self.folder)

    def commands(self):
        run, gpus = self.run_spec, self.spec.num_gpus
        launcher = ([TOOLS / "pretrain.sh", run.config, "--num-gpus", gpus] if gpus > 1
                    else [TOOLS / "pretrain.py", "--config-file", run.config])
        yield [*launcher, "--resume", *run.overrides, "OUTPUT_DIR", self.folder]


class ConvertStage(Stage):
    kind = "convert"

    def __init__(self, spec, run: PretrainRun):
        super().__init__(spec, spec.output_dir / "convert", f"convert {run.name}")
        self.source = spec.output_dir / "pretrain" / run.name / "model_final.pth"
        self.target = self.folder / f"{run.name}.pkl"

    def is_complete(self):
        return self.target.is_file()

    def commands(self):
        yield [TOOLS / "convert_to_d2.py", self.source, self.target]


def weights_for(spec, backbone: str) -> str:
    return "" if backbone == RANDOM else str(spec.output_dir / "convert" / f"{backbone}.pkl")


class FinetuneStage(Stage):
    kind = "finetune"

    def __init__(self, spec, task: TransferTask, backbone: str):
        super().__init__(spec, spec.output_dir / "finetune" / task.name / backbone,
                         f"fine-tune {task.name} from {backbone}")
        self.task, self.backbone = task, backbone

    def is_complete(self):
        return _final_checkpoint_done(self.folder)

    def commands(self):
        # No evaluation here (DATASETS.TEST empty): the evaluate stage does it once.
        yield [TOOLS / "train_net.py", "--config-file", self.task.config, "--resume",
               "--num-gpus", max(1, self.spec.num_gpus), *self.spec.dataset_args,
               *self.task.overrides,
               "MODEL.WEIGHTS", weights_for(self.spec, self.backbone),
               "DATASETS.TEST", "()", "OUTPUT_DIR", self.folder]


class EvaluateStage(Stage):
    kind = "evaluate"

    def __init__(self, spec, task: TransferTask, backbone: str):
        super().__init__(spec, spec.output_dir / "evaluate" / task.name / backbone,
                         f"evaluate {task.name} from {backbone}")
        self.task, self.backbone = task, backbone
        self.weights = spec.output_dir / "finetune" / task.name / backbone / "model_final.pth"

    def is_complete(self):
        return (self.folder / "final_metrics.json").is_file()

    def commands(self):
        yield [TOOLS / "train_net.py", "--config-file", self.task.config, "--eval-only",
               "--num-gpus", max(1, self.spec.num_gpus), "--save-predictions",
               str(self.spec.predictions), *self.spec.dataset_args,
               *self.task.overrides, "MODEL.WEIGHTS", self.weights, "OUTPUT_DIR", self.folder]


def build_stages(spec: PipelineSpec):
    stages = [PretrainStage(spec, r) for r in spec.pretrain]
    stages += [ConvertStage(spec, r) for r in spec.pretrain]
    for task in spec.transfer:
        stages += [FinetuneStage(spec, task, b) for b in task.backbones]
    for task in spec.transfer:
        stages += [EvaluateStage(spec, task, b) for b in task.backbones]
    return stages


_LOG_MESSAGE = re.compile(r"\[\d\d/\d\d \d\d:\d\d:\d\d [^\]]*\]:? (.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _echo_progress(line: str):
    """Show the lines a person follows progress by; everything goes to the stage's log."""
    keys = ("eta:", "Inference done", "error:", "Error:", "Traceback", "kNN top-1",
            "continuing at iteration", "tensors mapped", "| bbox/", "| segm/", "| sem_seg/")
    line = _ANSI.sub("", line)
    if any(k in line for k in keys):
        message = _LOG_MESSAGE.search(line)  # drop progress-bar residue before a log message
        print("    " + (message.group(1) if message else line.strip())[:160], flush=True)


def run_pipeline(spec: PipelineSpec, echo=_echo_progress):
    """Run the stages that are not complete, then write the report; returns its path."""
    from .report import write_report

    spec.output_dir.mkdir(parents=True, exist_ok=True)
    (spec.output_dir / "pipeline.yaml").write_text(spec.source)
    stages = build_stages(spec)
    start = time.time()
    for i, stage in enumerate(stages, 1):
        prefix = f"[pipeline {i}/{len(stages) + 1}] {stage.label}"
        if stage.is_complete():
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        print(f"{prefix} ...", flush=True)
        t = time.time()
        stage.run(echo)
        print(f"{prefix}: done in {time.time() - t:.0f} s", flush=True)
    print(f"[pipeline {len(stages) + 1}/{len(stages) + 1}] report", flush=True)
    report = write_report(spec)
    print(f"[pipeline] finished in {time.time() - start:.0f} s; report: {report}", flush=True)
    return report
