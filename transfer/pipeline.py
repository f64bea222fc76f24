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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretrain.config import PROBE_KEYS, load_config
from pretrain.config import RUNTIME_KEYS as PRETRAIN_RUNTIME_KEYS
from pretrain.launch import launch_command
from ssl2det.config import config_values, key_in
from ssl2det.errors import one_line_errors
from ssl2det.io import atomic_write
from ssl2det.output_dir import claim_output_dir, refuse_if_busy
from ssl2det.process import log_tail, run_logged

from .config import RUNTIME_KEYS as TRANSFER_RUNTIME_KEYS
from .config import merge_config
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

    def recorded_hash(self):
        try:
            return json.loads(self.record.read_text()).get("hash")
        except (OSError, ValueError):
            return None

    def write_record(self, fingerprint: str, seconds: float = None):
        """The record: the hash of the inputs, the command, the effective config and, once the
        stage has finished, its wall time (the report's "what ran")."""
        self.record.parent.mkdir(parents=True, exist_ok=True)
        record = {"hash": fingerprint, "command": [str(c) for c in self.command()],
                  "config": self.effective_config()}
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
        log = self.folder / f"{self.kind}.log"
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
        self.settings, self.result = spec.probe, spec.layout.probe_result(self.name)
        self.pretrain, self.run_spec = None if random else pretrain, pretrain.run_spec
        if random:
            self.encoder = ["--random-init", "--config-file", self.run_spec.config,
                            *self.run_spec.overrides]
        else:  # the run's own config.yaml, beside its checkpoint
            self.encoder = ["--checkpoint", spec.layout.pretrain_checkpoint(self.name)]

    def is_complete(self):
        return self.result.is_file()

    def command(self):
        s = self.settings
        return [sys.executable, "-m", "pretrain.eval", "probe", "--train-root", s.train_root,
                "--val-root", s.val_root, "--epochs", s.linear_epochs, "--protocol",
                s.linear_protocol, "--output", self.result,
                *self.encoder, *s.overrides]

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

    def train_net(self, *flags):
        return [sys.executable, "-m", "transfer.train_net", "--config-file", self.task.config,
                *flags, "--num-gpus", max(1, self.spec.num_gpus), *self.spec.dataset_args,
                *self.task.overrides, "SEED", self.replicate, *self.extra_opts()]

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

    def extra_opts(self):
        # No evaluation here (DATASETS.TEST empty): the evaluate stage does it once.
        return ["MODEL.WEIGHTS", _weights(self.spec, self.weights_from),
                "DATASETS.TEST", "()", "OUTPUT_DIR", self.folder]

    def command(self):
        return self.train_net("--resume")

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

    def extra_opts(self):
        return ["MODEL.WEIGHTS", self.weights, "OUTPUT_DIR", self.folder]

    def command(self):
        return self.train_net("--eval-only", "--save-predictions", self.spec.predictions)

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


def run_pipeline(spec, echo=_echo_progress, keep_stale=False):
    """Check every input (the pre-flight), run the stages that are not complete, then write the
    report; returns its path.

    A complete stage whose inputs have changed since (another config, override or upstream
    result) is stale: its outputs are moved aside and it runs again; with `keep_stale` it is
    skipped and reported as stale."""
    refuse_if_busy(str(spec.layout.root), key="output_dir")  # before minutes of pre-flight
    stages = build_stages(spec)
    print(f"[pipeline] pre-flight: {preflight(spec, stages)}", flush=True)
    # held until this process ends: a second pipeline here would move this one's live
    # outputs aside and resume from its checkpoints
    claim_output_dir(str(spec.layout.root), key="output_dir")
    spec.layout.run_file.write_text(spec.source)
    hashes = fingerprints(stages)
    stale = []
    start = time.time()
    for i, stage in enumerate(stages, 1):
        prefix = f"[pipeline {i}/{len(stages) + 1}] {stage.label}"
        current = stage.recorded_hash() == hashes[stage.key]
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
        print(f"{prefix} ...", flush=True)
        t = time.time()
        stage.write_record(hashes[stage.key])
        stage.run(echo)
        stage.write_record(hashes[stage.key], seconds=time.time() - t)
        print(f"{prefix}: done in {time.time() - t:.0f} s", flush=True)
    print(f"[pipeline {len(stages) + 1}/{len(stages) + 1}] report", flush=True)
    report = write_report(spec, stale, [(stage.label, stage.record, stage.folder)
                                        for stage in stages])
    print(f"[pipeline] finished in {time.time() - start:.0f} s; report: {report}", flush=True)
    return report


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
    args = parser.parse_args(argv)
    spec = load_spec(args.run_file, args.output_dir)
    if args.check:
        print(f"[pipeline] pre-flight: {preflight(spec, build_stages(spec))}")
        return 0
    run_pipeline(spec, keep_stale=args.keep_stale)
    return 0


if __name__ == "__main__":
    sys.exit(main())
