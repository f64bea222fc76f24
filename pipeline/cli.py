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
    repeats: 3                        # seeds per fine-tuning (default 1; pipeline/spec.py)
    launch: {local: {num_gpus: 8}}    # GPUs per stage (default: one process, GPU or CPU)
    report: {predictions: 3, name: report}   # what it draws; REPORT.md, REPORT.html

Config paths are taken as given (relative to the working directory), else relative to the run
file's folder or one of its parents. Each stage works in its own folder (pipeline/layout.py) and
is skipped when its outputs are complete; an interrupted stage resumes (pretraining and
fine-tuning from their last checkpoint). Every stage is a child process running one of the
packages' entry points (`python -m pretrain`, `python -m transfer.train_net`, ...); its output
goes to a log in the stage's folder. Before any stage starts, a pre-flight (pipeline/preflight.py)
checks every input the run will need and lists everything missing at once; `--check` runs only
that, `--dry-run` prints what would run and where (each job, the sbatch script under `slurm`),
and `--status` where every stage stands.

The parts: pipeline/stages.py (each kind of stage), pipeline/plan.py (what to do with each),
pipeline/executors/ (where the stages run: the interface, local, slurm, the dry run), this
module (the command line).
"""

import sys
import time

from ssl2det.errors import one_line_errors
from ssl2det.output_dir import claim_output_dir, refuse_if_busy

from .executors import EXECUTORS, build_executor
from .plan import carry_out, make_plan, status_line
from .spec import PipelineError, RunFileError, load_spec
from .stages import build_stages, fingerprints

__all__ = ["build_stages", "fingerprints", "load_spec", "main", "run_pipeline"]


def preflight_line(spec, stages, executor, writes: bool = True) -> str:
    """The pre-flight's summary line (it raises listing every problem). Imported here: it
    resolves detectron2's data sets (detectron2.data, torchvision: about 2 s a process), which
    --status and the report's own process do not need."""
    from .preflight import preflight

    return preflight(spec, stages, executor.problems(stages), writes)


def run_pipeline(spec, keep_stale=False, executor_name=None, wait=False, dry_run=False):
    """Check every input (the pre-flight, the executor's too), then hand the stages that are
    not complete and current to the executor; returns the report's path. The runs are followed
    to their end where the executor does so by default (local) or with `wait` (a scheduler's
    jobs run without this process); a stage that did not complete then fails the pipeline.

    A complete stage whose inputs have changed since (another config, override or upstream
    result) is stale: its outputs are moved aside and it runs again; with `keep_stale` it is
    skipped and reported as stale."""
    executor = build_executor(executor_name or spec.launch.executor, spec.launch,
                              spec.layout.root, dry_run=dry_run)
    refuse_if_busy(str(spec.layout.root), key="output_dir")  # before minutes of pre-flight
    stages = build_stages(spec)
    print(f"[pipeline] pre-flight: {preflight_line(spec, stages, executor, not dry_run)}",
          flush=True)
    if not dry_run:
        # held until this process ends: a second pipeline here would move this one's live
        # outputs aside and resume from its checkpoints
        claim_output_dir(str(spec.layout.root), key="output_dir")
        spec.layout.run_file.write_text(spec.source)
    hashes = fingerprints(stages)
    start = time.time()
    plan = make_plan(stages, hashes, executor.states(stages), executor, keep_stale)
    runs = carry_out(plan, executor, hashes)
    report = spec.layout.report(spec.report_name)
    executor.report_started(runs, plan.live, time.time() - start, report)
    if dry_run or not (wait or executor.follow_by_default):
        return report
    followed = [s for s in stages if s.key in runs or s.key in plan.live]
    states = executor.follow(followed)
    failed = [f"{s.label}: {status_line(s, states[s.key], hashes)}" for s in followed
              if not s.is_complete()]
    if failed:
        raise PipelineError("these stages did not complete:\n" + "\n".join(
            f"  - {line}" for line in failed) + "\nFix the cause and run the same command "
            "again: finished stages are skipped, only these and what depends on them run.")
    print(f"[pipeline] finished in {time.time() - start:.0f} s; report: {report}", flush=True)
    return report


def print_status(spec, executor_name=None) -> bool:
    """Every stage with where it stands; True when every stage is complete and current."""
    root = spec.layout.root
    if root.exists() and not root.is_dir():
        raise RunFileError(f"output_dir {root} is a file, not a run's folder: no stage has run "
                            "there; give the folder the run file's output_dir names")
    executor = build_executor(executor_name or spec.launch.executor, spec.launch, root)
    stages = build_stages(spec)
    hashes = fingerprints(stages)
    states = executor.states(stages)
    done = True
    for stage in stages:
        line = status_line(stage, states[stage.key], hashes)
        done &= line == "complete"
        print(f"  {stage.label}: {line}")
    return done


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
    parser.add_argument("--dry-run", action="store_true",
                        help="the pre-flight, then print each stage that would run with its job "
                             "(command, resources, dependencies; the sbatch script under slurm); "
                             "start, submit and write nothing")
    parser.add_argument("--executor", choices=sorted(EXECUTORS),
                        help="where the stages run (default: the run file's launch.executor, "
                             "else local); docs/cluster.md")
    parser.add_argument("--wait", action="store_true",
                        help="follow the runs until they have ended (what local does anyway; a "
                             "scheduler's jobs run without this process)")
    parser.add_argument("--status", action="store_true",
                        help="print every stage's state (complete, queued, running, failed with "
                             "its log, stale); submit nothing")
    args = parser.parse_args(argv)
    spec = load_spec(args.run_file, args.output_dir)
    if args.status:
        return 0 if print_status(spec, args.executor) else 1
    if args.check:
        executor = build_executor(args.executor or spec.launch.executor, spec.launch,
                                  spec.layout.root)
        stages = build_stages(spec)
        print(f"[pipeline] pre-flight: {preflight_line(spec, stages, executor)}")
        return 0
    run_pipeline(spec, keep_stale=args.keep_stale, executor_name=args.executor, wait=args.wait,
                 dry_run=args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
