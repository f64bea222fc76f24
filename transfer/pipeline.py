"""The whole chain as stages: pretrain -> convert -> (probe) -> fine-tune -> evaluate -> report.

A run is one YAML file (see configs/pipeline/demo.yaml):

    output_dir: output/demo
    datasets:                         # registered for every fine-tuning / evaluation
      register_voc: [[NAME, VOC_DIR, SPLIT], ...]
      register_coco: [[NAME, JSON, IMAGE_DIR], ...]
      voc_classes: raccoon
    pretrain:                         # one entry per pretraining run
      - {name: simclr, config: configs/..., overrides: [KEY, VALUE, ...]}
    probe:                            # optional: kNN + linear probe of each run's frozen encoder
      {train_root: DIR, val_root: DIR, linear_epochs: 100, linear_protocol: ours,
       baseline: true, overrides: [...]}
    backbones:                        # optional: weights from files, converted like ours
      - {name: supervised, weights: /data/r50.pth, label: "supervised ImageNet", source: URL}
    transfer:                         # one entry per downstream task
      - {name: voc, config: configs/..., overrides: [...], backbones: [random, simclr],
         baseline: random, metric: bbox/AP50, repeats: 5,
         reference: [{label: ..., metric: bbox/AP50, value: 81.3, source: ...}]}
    repeats: 3                        # seeds per fine-tuning (default 1; transfer/spec.py)
    launch: {num_gpus: 8}             # GPUs per stage (default: one process, GPU or CPU)
    report: {predictions: 3, name: report}   # what it draws; REPORT.md, REPORT.html

Config paths are taken as given (relative to the working directory), else relative to the run
file's folder or one of its parents. Each stage works in its own folder (transfer/layout.py) and
is skipped when its outputs are complete; an interrupted stage resumes (pretraining and
fine-tuning from their last checkpoint). Every stage is a child process running one of the
packages' entry points (`python -m pretrain`, `python -m transfer.train_net`, ...); its output
goes to a log in the stage's folder. Before any stage starts, a pre-flight (transfer/preflight.py)
checks every input the run will need and lists everything missing at once; `--check` runs only
that.
"""

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.config import PROBE_KEYS, load_config
from pretrain.eval.linear import PROTOCOLS
from pretrain.config import RUNTIME_KEYS as PRETRAIN_RUNTIME_KEYS
from pretrain.launch import launch_command
from ssl2det.config import config_values, key_in
from ssl2det.errors import one_line_errors
from ssl2det.io import atomic_write
from ssl2det.output_dir import claim_output_dir, refuse_if_busy
from ssl2det.process import log_tail, run_logged

from .config import RUNTIME_KEYS as TRANSFER_RUNTIME_KEYS
from .config import merge_config
from .executors import ALIVE, build_executor, job_states
from .layout import RANDOM
from .preflight import preflight
from .report import write_report
from .spec import PipelineError, load_spec, replicate_name


def _fingerprint(inputs) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _results_values(cfg, runtime_keys) -> dict:
    """The config's values that decide a stage's results (not its runtime keys)."""
    return {k: v for k, v in config_values(cfg).items() if not key_in(k, runtime_keys)}


class Stage:
    """One step of the chain: a child process whose outputs land in `folder`.

    A stage records what its outputs are made from (`inputs`: the effective config, the
    arguments, the records of the stages it reads) as a hash in RECORD, next to its outputs.
    The pipeline skips a complete stage only while that hash still holds."""

    kind = ""  # names the log file, FOLDER/KIND.log

    def __init__(self, folder: Path, label: str, key: tuple):
        self.folder, self.label, self.key = folder, label, key
        self.outputs = [folder]
        self.record = folder / "stage.json"
        self.requires = []  # the keys of the stages whose outputs this one reads (build_stages)

    @property
    def log_path(self) -> Path:
        return self.folder / f"{self.kind}.log"

    def upstream_keys(self) -> list:
        """The stages this one reads, where they are part of the run."""
        return []

    def task_command(self) -> list:
        """The command of one process when the executor starts the processes itself (SLURM:
        a task per GPU for pretraining); the others' command is the same as locally."""
        return self.command()

    def is_complete(self) -> bool:
        raise NotImplementedError

    def command(self) -> list:
        raise NotImplementedError

    def inputs(self, upstream: dict) -> dict:
        """What the outputs depend on; `upstream`: {stage key: hash} of the stages before."""
        raise NotImplementedError

    def effective_config(self) -> str:
        """The config the stage runs with, as text, for its record ("" for none)."""
        return ""

    def has_outputs(self) -> bool:
        return any(p.is_file() or (p.is_dir() and any(p.iterdir())) for p in self.outputs)

    def _read_record(self) -> dict:
        try:
            return json.loads(self.record.read_text())
        except (OSError, ValueError):
            return {}

    def recorded_hash(self):
        return self._read_record().get("hash")

    def recorded_job(self) -> str:
        """The id of the SLURM job last submitted for this stage ("" for none)."""
        return str(self._read_record().get("job", ""))

    def write_record(self, fingerprint: str, seconds: float = None, job: str = "",
                     command=None):
        """The record: the hash of the inputs, the command, the effective config, the SLURM job
        (when one runs it) and, once the stage has finished, its wall time (the report's "what
        ran")."""
        self.record.parent.mkdir(parents=True, exist_ok=True)
        record = {"hash": fingerprint, "command": [str(c) for c in command or self.command()],
                  "config": self.effective_config()}
        if job:
            record["job"] = job
        if seconds is not None:
            record["seconds"] = round(seconds, 1)
        text = json.dumps(record, indent=1)
        atomic_write(str(self.record), lambda f: f.write(text.encode()))

    def set_aside(self) -> list:
        """Move the outputs (and the record) of other inputs out of the way; returns where."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for path in [*self.outputs, self.record]:
            if path.exists():
                target = path.with_name(f"{path.name}.stale-{stamp}")
                path.rename(target)
                moved.append(target)
        return moved

    def run(self, echo):
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.log_path
        code = run_logged(self.command(), log, echo,
                          env=dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning"))
        if code != 0:
            raise PipelineError(f"stage {self.label} failed (exit {code}). Last lines of "
                                f"{log}:\n{log_tail(log)}\nFix the cause and run the same "
                                "command again: finished stages are skipped, this one resumes.")


def _final_checkpoint_done(folder: Path) -> bool:
    last = folder / "last_checkpoint"
    return last.is_file() and last.read_text().strip() == "model_final.pth" and (
        folder / "model_final.pth").is_file()


class PretrainStage(Stage):
    kind = "pretrain"

    def __init__(self, spec, run, replicate: int = 0):
        self.name = replicate_name(run.name, replicate)
        super().__init__(spec.layout.pretrain(self.name), f"pretrain {self.name}",
                         ("pretrain", self.name))
        self.run_spec, self.replicate, self.num_gpus = run, replicate, max(1, spec.num_gpus)

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

    def command(self):
        return launch_command(self.run_spec.config, self.num_gpus, resume=True, opts=self.opts())

    def task_command(self):
        # one process: under SLURM every task is one, its rank from SLURM's environment
        return launch_command(self.run_spec.config, 1, resume=True, opts=self.opts())

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
        super().__init__(self.target.parent, f"convert {name}", ("convert", name))
        self.outputs = [self.target]
        self.record = self.target.with_suffix(".stage.json")
        self.name, self.source, self.upstream_key = name, source, upstream_key

    @property
    def log_path(self) -> Path:  # conversions share a folder, and may run at once (SLURM)
        return self.target.with_suffix(".log")

    def upstream_keys(self):
        return [self.upstream_key] if self.upstream_key else []

    def is_complete(self):
        return self.target.is_file()

    def command(self):
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
        if random:
            self.encoder = ["--random-init", "--config-file", self.run_spec.config,
                            *self.run_spec.overrides]
        else:  # the run's own config.yaml, beside its checkpoint
            self.encoder = ["--checkpoint", spec.layout.pretrain_checkpoint(self.name)]

    def upstream_keys(self):
        return [("pretrain", self.name)] if self.pretrain else []

    def is_complete(self):
        return self.result.is_file()

    def _probe(self):
        s = self.settings
        return ["-m", "pretrain.eval", "probe", "--train-root", s.train_root, "--val-root",
                s.val_root, "--epochs", s.linear_epochs, "--protocol", s.linear_protocol,
                "--output", self.result, *self.encoder, *s.overrides]

    def command(self):
        # the probe on augmented images splits its batches over the GPUs (torchrun), as
        # pretraining does; the probes on features computed once run in one process
        gpus = self.spec.num_gpus if PROTOCOLS[self.settings.linear_protocol].on_images else 1
        if gpus > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                    str(gpus), *self._probe()]
        return [sys.executable, *self._probe()]

    def task_command(self):  # SLURM starts the tasks itself
        return [sys.executable, *self._probe()]

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

    def __init__(self, spec, task, backbone: str, replicate: int, folder: Path, label: str,
                 key: tuple):
        super().__init__(folder, label, key)
        self.spec, self.task, self.backbone, self.replicate = spec, task, backbone, replicate
        self.weights_from = spec.backbone_replicate(backbone, replicate)

    def train_net(self, *flags, num_gpus=None):
        gpus = max(1, self.spec.num_gpus if num_gpus is None else num_gpus)
        return [sys.executable, "-m", "transfer.train_net", "--config-file", self.task.config,
                *flags, "--num-gpus", gpus, *self.spec.dataset_args,
                *self.task.overrides, "SEED", self.replicate, *self.extra_opts()]

    def command(self):
        return self.train_net(*self.flags())

    def task_command(self):  # a job's node: one task, a process per GPU of the node
        return self.train_net(*self.flags(),
                              num_gpus=self.spec.launch.resources(self.kind).gpus_per_node)

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


def build_stages(spec):
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


class ReportStage:
    """The report as a SLURM job: `--report-only` after every other stage (locally the pipeline
    writes it itself)."""

    kind, label, key = "report", "report", ("report",)

    def __init__(self, spec):
        self.spec, self.folder = spec, spec.layout.root
        self.log_path = self.folder / "report.log"
        self.record = self.folder / "report.stage.json"

    def command(self):
        return [sys.executable, "-m", "transfer.pipeline", str(self.spec.layout.run_file),
                "--output-dir", str(self.spec.layout.root), "--report-only"]

    def recorded_job(self) -> str:
        try:
            return str(json.loads(self.record.read_text()).get("job", ""))
        except (OSError, ValueError):
            return ""

    def write_record(self, job: str):
        text = json.dumps({"job": job, "command": [str(c) for c in self.command()]}, indent=1)
        atomic_write(str(self.record), lambda f: f.write(text.encode()))


def stale_stages(stages, hashes) -> list:
    """Keys of the complete stages made from other inputs than the run file's now."""
    return [s.key for s in stages if s.is_complete() and s.recorded_hash() not in (
        None, hashes[s.key])]


def _records(stages):
    return [(stage.label, stage.record, stage.folder) for stage in stages]


def plan(stages, hashes, keep_stale, executor):
    """What to do with each stage: (todo [(prefix, stage)], stale kept [keys], live jobs
    {key: job id}). Complete current stages are skipped; a stage whose SLURM job is queued or
    running is left to it; a stage made from other inputs has its outputs moved aside (or is
    kept, marked stale, with `keep_stale`)."""
    states = job_states(stage.recorded_job() for stage in stages)
    todo, stale, live = [], [], {}
    for i, stage in enumerate(stages, 1):
        prefix = f"[pipeline {i}/{len(stages) + 1}] {stage.label}"
        current = stage.recorded_hash() == hashes[stage.key]
        job = stage.recorded_job()
        state = states.get(job, "")
        if state in ALIVE:
            if not current:
                raise PipelineError(f"{prefix}: its SLURM job {job} is {state} but was made from "
                                    f"other inputs than the run file's now; cancel it (scancel "
                                    f"{job}) or let it end, then run again")
            if executor.name == "local":
                raise PipelineError(f"{prefix}: its SLURM job {job} is {state}; wait for it or "
                                    f"cancel it (scancel {job}): two runs of one stage would "
                                    "write one folder")
            print(f"{prefix}: {state.lower()} as SLURM job {job}, left to it", flush=True)
            live[stage.key] = job
            continue
        if stage.is_complete() and current:
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        # Outputs without any record were made outside the pipeline (a pretraining run started
        # by hand, e.g. on several machines): the stage runs over them, and its own --resume
        # refuses them if their config differs.
        if stage.has_outputs() and not current and stage.recorded_hash() is not None:
            if keep_stale and stage.is_complete():
                print(f"{prefix}: STALE (its inputs changed since it ran), kept as asked",
                      flush=True)
                stale.append(stage.key)
                continue
            moved = stage.set_aside()
            print(f"{prefix}: its inputs changed since its outputs were made; moved them to "
                  f"{', '.join(map(str, moved))}", flush=True)
        todo.append((prefix, stage))
    return todo, stale, live


def run_pipeline(spec, echo=_echo_progress, keep_stale=False, executor_name=None, wait=False):
    """Check every input (the pre-flight, the cluster's too under SLURM), then run the stages
    that are not complete and write the report (local; returns its path), or submit them as
    SLURM jobs and return (with `wait`, once they have ended).

    A complete stage whose inputs have changed since (another config, override or upstream
    result) is stale: its outputs are moved aside and it runs again; with `keep_stale` it is
    skipped and reported as stale."""
    executor = build_executor(executor_name or spec.launch.executor, spec.launch,
                              spec.layout.root)
    refuse_if_busy(str(spec.layout.root), key="output_dir")  # before minutes of pre-flight
    stages = build_stages(spec)
    summary = preflight(spec, stages, executor.problems(stages))
    print(f"[pipeline] pre-flight: {summary}", flush=True)
    # held until this process ends: a second pipeline here would move this one's live
    # outputs aside and resume from its checkpoints
    claim_output_dir(str(spec.layout.root), key="output_dir")
    spec.layout.run_file.write_text(spec.source)
    hashes = fingerprints(stages)
    start = time.time()
    todo, stale, live = plan(stages, hashes, keep_stale, executor)
    if executor.name == "local":
        executor.run(todo, hashes, echo)
        print(f"[pipeline {len(stages) + 1}/{len(stages) + 1}] report", flush=True)
        report = write_report(spec, stale, _records(stages))
        print(f"[pipeline] finished in {time.time() - start:.0f} s; report: {report}", flush=True)
        return report
    jobs = submit(spec, executor, todo, hashes, live)
    print(f"[pipeline] submitted {len(jobs)} SLURM job(s) in {time.time() - start:.1f} s"
          + (f", {len(live)} already queued or running" if live else "") + "; follow them with "
          f"--status or --wait; the report: {spec.layout.report(spec.report_name)}", flush=True)
    if wait:
        report_job = ReportStage(spec).recorded_job()
        follow_jobs(spec, stages, {("report",): report_job, **live, **jobs})
    return spec.layout.report(spec.report_name)


def submit(spec, executor, todo, hashes, live) -> dict:
    """Submit each stage of `todo` with `afterok` on the jobs of the stages it reads (those
    submitted now, or queued or running from before), then the report after all of them;
    returns {stage key: job id}, the report's under ("report",)."""
    jobs = {}
    for prefix, stage in todo:
        waits_for = [jobs.get(key) or live.get(key) for key in stage.requires]
        command = stage.task_command()
        stage.folder.mkdir(parents=True, exist_ok=True)
        job = executor.submit(stage, command, [j for j in waits_for if j])
        stage.write_record(hashes[stage.key], job=job, command=command)
        jobs[stage.key] = job
        after = f" after {', '.join(j for j in waits_for if j)}" if any(waits_for) else ""
        print(f"{prefix}: SLURM job {job}{after}", flush=True)
    report = ReportStage(spec)
    previous = report.recorded_job()
    previous_alive = job_states([previous]).get(previous) in ALIVE
    if not jobs and (previous_alive or (not live and spec.layout.report(spec.report_name)
                                        .is_file())):
        return jobs  # nothing new: the report job queued before, or the report, stands
    if previous_alive:
        subprocess.run(["scancel", previous], capture_output=True)  # superseded by this one
    every = sorted({*jobs.values(), *live.values()}, key=int)
    job = executor.submit(report, report.command(), every)
    report.write_record(job)
    jobs[report.key] = job
    print(f"[pipeline] report: SLURM job {job}"
          + (f" after {len(every)} job(s)" if every else ""), flush=True)
    return jobs


def stage_status(stage, hashes, states) -> str:
    """One stage's state as --status prints it."""
    job = stage.recorded_job()
    state = states.get(job, "")
    if stage.is_complete():
        return "complete" if stage.recorded_hash() in (None, hashes[stage.key]) else (
            "STALE (complete, made from other inputs)")
    if state in ALIVE:
        return {"PENDING": "queued", "RUNNING": "running"}.get(state, state.lower()) + \
            f" (job {job})"
    if job:
        log = stage.log_path
        last = log_tail(log, 1).strip() if log.is_file() else "(no log)"
        why = f"{state.lower()}, " if state else ""
        return f"FAILED ({why}job {job}): log {log}: {last[:200]}"
    return "interrupted (outputs, no finished run)" if stage.has_outputs() else "not started"


def print_status(spec) -> bool:
    """Every stage with its state; True when every stage and the report are complete."""
    stages = build_stages(spec)
    hashes = fingerprints(stages)
    report = ReportStage(spec)
    states = job_states([s.recorded_job() for s in stages] + [report.recorded_job()])
    done = True
    for stage in stages:
        line = stage_status(stage, hashes, states)
        done &= line == "complete"
        print(f"  {stage.label}: {line}")
    path = spec.layout.report(spec.report_name)
    job = report.recorded_job()
    if path.is_file() and states.get(job, "") not in ALIVE:
        print(f"  report: written, {path}")
    elif states.get(job, "") in ALIVE:
        done = False
        print(f"  report: {states[job].lower()} (job {job})")
    else:
        done = False
        print("  report: not written")
    return done


def follow_jobs(spec, stages, jobs, poll_s: float = 2.0):
    """Print each job's changes of state until none is queued or running; a PipelineError
    naming the stages that did not complete."""
    by_key = {stage.key: stage.label for stage in stages}
    labels = {job: by_key.get(key, "report") for key, job in jobs.items()}
    seen = {}
    while True:
        states = job_states(jobs.values())
        for job, label in labels.items():
            state = states.get(job, "ENDED")
            if job and seen.get(job) != state:
                seen[job] = state
                print(f"[pipeline] {label} (job {job}): {state.lower()}", flush=True)
        if not any(states.get(job) in ALIVE for job in jobs.values()):
            break
        time.sleep(poll_s)
    hashes = fingerprints(stages)
    failed = [f"{s.label}: {stage_status(s, hashes, states)}" for s in stages
              if s.key in jobs and not s.is_complete()]
    if failed:
        raise PipelineError("these stages did not complete:\n" + "\n".join(
            f"  - {line}" for line in failed) + "\nFix the cause and submit again: only "
            "they and what depends on them are submitted.")
    print(f"[pipeline] every job ended; report: {spec.layout.report(spec.report_name)}",
          flush=True)


@one_line_errors
def main(argv=None, description=__doc__):
    import argparse

    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_file", help="pipeline YAML (e.g. configs/pipeline/demo.yaml)")
    parser.add_argument("--output-dir", help="overrides the run file's output_dir")
    parser.add_argument("--keep-stale", action="store_true",
                        help="do not re-run finished stages whose inputs changed; report them as "
                             "stale instead")
    parser.add_argument("--check", action="store_true",
                        help="only the pre-flight: check every input the run needs, start nothing")
    parser.add_argument("--executor", choices=("local", "slurm"),
                        help="where the stages run (default: the run file's launch.executor, "
                             "else local); docs/cluster.md")
    parser.add_argument("--wait", action="store_true",
                        help="slurm: follow the jobs until they have ended")
    parser.add_argument("--status", action="store_true",
                        help="print every stage's state (complete, queued, running, failed with "
                             "its log, stale); submit nothing")
    parser.add_argument("--report-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    spec = load_spec(args.run_file, args.output_dir)
    if args.status:
        return 0 if print_status(spec) else 1
    if args.report_only:  # the report job of a SLURM run
        stages = build_stages(spec)
        write_report(spec, stale_stages(stages, fingerprints(stages)), _records(stages))
        return 0
    if args.check:
        executor = build_executor(args.executor or spec.launch.executor, spec.launch,
                                  spec.layout.root)
        stages = build_stages(spec)
        print(f"[pipeline] pre-flight: {preflight(spec, stages, executor.problems(stages))}")
        return 0
    run_pipeline(spec, keep_stale=args.keep_stale, executor_name=args.executor, wait=args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
