"""The pipeline's pre-flight: every input a run will need, checked before any stage starts.

A missing VOC folder found after two days of pretraining costs two days. So before the first
stage the pipeline reads every config with its overrides, looks at every image folder (readable,
how many images), resolves every detectron2 data set the fine-tuning and evaluation stages name
(the run file's registrations, detectron2's builtin names under $DETECTRON2_DATASETS, VOC's
image lists), opens every weights file with the safe loader and checks its architecture
against the one each fine-tuning builds (a pretraining's too, from its config), checks that the
metrics the report reads are ones the evaluator reports, that the output folder can be written
and that no other pipeline holds it, and estimates the disk the checkpoints will take.
Everything wrong is reported at once, each with what was expected; no stage starts.
`tools/pipeline.py RUN --check` runs only this. Each stage says what keeps it from running
(`Stage.problems`, pipeline/stages/; what they share: pipeline/checks.py); this module adds
the output folder, the disk and the executor's own problems, and lists them.
"""

import os
import shutil

from ssl2det.errors import UserError
from ssl2det.output_dir import output_dir_holder

from .checks import Checks
from .spec import PipelineError


class PreflightError(PipelineError):
    """Inputs of the run are missing; the message lists each with the stages it would stop."""

    exit_code = 2


def _grouped(found) -> list:
    """One line per distinct problem, with the stages it stops (the first three named)."""
    stages = {}
    for label, problem in found:
        stages.setdefault(problem, []).append(label)
    lines = []
    for problem, labels in stages.items():
        more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
        lines.append(f"{problem} [{', '.join(labels[:3])}{more}]")
    return lines


def output_dir_problem(root) -> str:
    """Why the run folder cannot be used ("" when it can): a file, unwritable (read-only, no
    permission), or held by another live pipeline."""
    if root.exists() and not root.is_dir():
        return f"output_dir {root} is a file, not a folder; choose another output_dir"
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir():
        return f"output_dir {root} lies under the file {existing}; choose another output_dir"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"output_dir {root} cannot be written ({existing} is read-only or not yours); "
                "choose another output_dir")
    holder = output_dir_holder(str(root))
    if holder:
        return (f"output_dir {root} is in use by {holder}: two pipelines in one folder would "
                "mix their runs; wait for it, stop it, or use another output_dir")
    return ""


def preflight(spec, stages, cluster=(), writes: bool = True) -> str:
    """Check every input of `stages`; returns a one-line summary, or raises PreflightError
    listing every problem found (`cluster`: the executor's, pipeline/executors/). `writes`
    False (a dry run): nothing is written, not even an archive's index for the stages."""
    checks, found, disk = Checks(spec, writes), [], 0.0  # found: (stage label, problem)
    for stage in stages:
        try:
            problems = stage.problems(checks)
            disk += stage.checkpoint_bytes(checks)
        except UserError as e:  # a bad config file or override
            problems = [str(e)]
        found += [(stage.label, p) for p in problems if p]
    problems = _grouped(found) + list(cluster)
    root = spec.layout.root
    if output_dir_problem(root):
        problems.append(output_dir_problem(root))
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if disk > free:
        problems.append(f"disk: the checkpoints need about {disk / 1e9:.1f} GB, {existing} has "
                        f"{free / 1e9:.1f} GB free (raise SOLVER.CHECKPOINT_PERIOD or free space)")
    if problems:
        raise PreflightError(f"pre-flight found {len(problems)} problem(s), nothing was started:\n"
                            + "\n".join(f"  - {p}" for p in problems))
    counts = ", ".join(f"{root} ({n} images)" for root, n in checks.images.items())
    summary = f"{len(stages)} stage{'s' * (len(stages) != 1)}, every input found"
    if counts:
        summary += f"; image folders: {counts}"
    return summary + f"; checkpoints need about {disk / 1e9:.1f} GB of {free / 1e9:.0f} GB free"
