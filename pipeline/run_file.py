"""The run file's schema: every key a pipeline run file may hold, with its type and bounds
(pydantic v2 models, `extra="forbid"`, strict types). A run file is checked whole before
anything else happens; every problem is reported at once, each naming the file, the key path
(`transfer[0].basline`), what was expected and, for a misspelt key, the closest allowed one.

Names become folder and file names (pipeline/layout.py), so they are one pattern: a letter or
digit, then letters, digits, `_`, `-`, `.` (at most 64), never `NAME-seedN` (the names of seed
replicates) and, for backbones, never `random` (the randomly initialised one). Names are unique
per kind.
"""

import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError, create_model)

from pretrain.eval.protocols import PROTOCOLS
from ssl2det.config import read_yaml_mapping
from ssl2det.errors import UserError

from .layout import RANDOM
from .run_file_messages import messages

class PipelineError(UserError, ValueError):
    """A bad run file or a failed stage; the message says which and where the log is."""


class RunFileError(PipelineError):
    """The run file does not fit the schema: bad input, exit code 2."""

    exit_code = 2


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_REPLICATE = re.compile(r".*-seed\d+")
MAX_REPEATS = 100  # ours: far above any study's seeds, far below what would run for ever
PROBE_PROTOCOLS = tuple(PROTOCOLS)


def _safe_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError("a name is a letter or digit, then up to 63 letters, digits, '_', '-' "
                         "or '.' (it names a folder: no '/', no '..', not empty)")
    if _REPLICATE.fullmatch(value):
        raise ValueError("a name must not end in -seedN: that is how seed replicates are named")
    return value


def _not_random(value: str) -> str:
    if value == RANDOM:
        raise ValueError(f"'{RANDOM}' is the randomly initialised backbone; choose another name")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("a number that is finite (not NaN or infinite)")
    return value


Name = Annotated[StrictStr, AfterValidator(_safe_name)]
BackboneName = Annotated[Name, AfterValidator(_not_random)]
Repeats = Annotated[StrictInt, Field(ge=1, le=MAX_REPEATS)]
Number = Annotated[Union[StrictInt, StrictFloat], AfterValidator(_finite)]
Path = Annotated[StrictStr, Field(min_length=1)]
#: A `KEY VALUE` override's key or value: written as YAML numbers, booleans or strings
Override = Union[StrictStr, StrictInt, StrictFloat, StrictBool]


def _pairs(values: list) -> list:
    if len(values) % 2:
        raise ValueError("overrides come as KEY, VALUE pairs: an even number of items")
    keys = [str(k) for k in values[::2]]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice in one overrides list (the last would "
                         "win): give each key once")
    return [str(v) for v in values]


def _not_set_here(reserved: dict):
    """Overrides without the keys the pipeline sets itself ({key: the run-file key that does}):
    the pipeline's value would silently win."""
    def check(values: list) -> list:
        for key in values[::2]:
            if key in reserved:
                raise ValueError(f"{key} is set by the pipeline ({reserved[key]}): remove it")
        return values
    return AfterValidator(check)


Overrides = Annotated[list[Override], AfterValidator(_pairs),
                      _not_set_here({"OUTPUT_DIR": "output_dir and the entry's name"})]
TransferOverrides = Annotated[list[Override], AfterValidator(_pairs), _not_set_here({
    "OUTPUT_DIR": "output_dir and the entry's name",
    "MODEL.WEIGHTS": "the task's backbones: and the backbones: entries",
    "SEED": "repeats: (seed k of every backbone is k)"})]


class Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PretrainEntry(Entry):
    name: BackboneName
    config: Path
    overrides: Overrides = []
    repeats: Repeats = 1


class BackboneEntry(Entry):
    name: BackboneName
    weights: Path
    label: StrictStr = ""
    source: StrictStr = ""


class ReferenceEntry(Entry):
    label: StrictStr
    metric: StrictStr
    value: Number
    source: StrictStr


class TransferEntry(Entry):
    name: Name
    config: Path
    overrides: TransferOverrides = []
    backbones: Optional[list[Name]] = None  # default: random and every pretrain / backbones entry
    repeats: Optional[Repeats] = None  # default: the top level's
    baseline: StrictStr = ""
    metric: StrictStr = ""
    reference: list[ReferenceEntry] = []


def _downstream_set(name: str) -> str:
    from pretrain.eval.sets import SETS

    if name not in SETS:
        raise ValueError(f"not a downstream set here (known: {', '.join(sorted(SETS))})")
    return name


class ClassificationEntry(Entry):
    """A downstream classification set on which every backbone's frozen encoder is evaluated
    (pretrain/eval/downstream.py; one stage per backbone replicate)."""

    name: Name
    dataset: Annotated[StrictStr, AfterValidator(_downstream_set)]
    root: Path
    protocol: Literal["infocl", "kornblith"] = "infocl"
    size: Annotated[StrictInt, Field(ge=0, le=1024)] = 0  # 0: the protocol's
    classes: Annotated[StrictInt, Field(ge=0, le=100_000)] = 0  # 0: the release's
    repeats: Repeats = 1  # the probe's seeds per backbone replicate (features computed once)
    backbones: Optional[list[Name]] = None  # default: every pretrain entry; or `random`
    baseline: StrictStr = ""
    reference: list[ReferenceEntry] = []


class ProbeEntry(Entry):
    train_root: Path
    val_root: Path
    linear_epochs: Annotated[StrictInt, Field(ge=1, le=10_000)] = 100
    linear_protocol: Literal[PROBE_PROTOCOLS] = "ours"
    baseline: StrictBool = True
    overrides: Overrides = []


def _three(what: str):
    def check(values: list) -> list:
        if len(values) != 3:
            raise ValueError(f"a list of three: [{what}]")
        return values
    return Annotated[list[Path], AfterValidator(check)]


class Datasets(Entry):
    register_voc: list[_three("NAME, VOC_DIR, SPLIT")] = []
    register_coco: list[_three("NAME, JSON, IMAGE_DIR")] = []
    register_semseg: list[_three("NAME, IMAGE_DIR, LABEL_DIR")] = []
    voc_classes: Union[StrictStr, list[StrictStr]] = ""  # "a,b" or [a, b]

    def class_names(self) -> list:
        names = self.voc_classes.split(",") if isinstance(self.voc_classes, str) else self.voc_classes
        return [n.strip() for n in names if n.strip()]


def walltime_minutes(value: str) -> int:
    """Minutes of a SLURM time limit, every form sbatch takes, as SLURM reads it: "MM",
    "MM:SS", "HH:MM:SS", "D-HH", "D-HH:MM", "D-HH:MM:SS" (seconds round up to a minute)."""
    value = value.strip()
    with_days = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+))?", value)
    plain = re.fullmatch(r"(\d+)(?::(\d+))?(?::(\d+))?", value)
    if with_days:
        days, hours, minutes, seconds = (int(g or 0) for g in with_days.groups())
    elif plain:
        parts = [int(g) for g in plain.groups() if g is not None]
        days, (hours, minutes, seconds) = 0, ([0, *parts, 0] if len(parts) == 1 else
                                              [0, *parts] if len(parts) == 2 else parts)
    else:
        raise ValueError(f"not a SLURM time limit: {value!r} (write MINUTES, HH:MM:SS or "
                         "D-HH:MM:SS)")
    return ((days * 24 + hours) * 60 + minutes) + (seconds > 0)


def _walltime(value: str) -> str:
    minutes = walltime_minutes(value)
    if minutes < 1:
        raise ValueError("a time limit of at least one minute")
    return value


Walltime = Annotated[StrictStr, AfterValidator(_walltime)]


class Resources(Entry):
    """What one run of a stage asks for, on any executor: nodes, GPUs and tasks per node, CPUs,
    memory, time (in the forms sbatch takes; pipeline/executors/ map them to their own)."""

    nodes: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    gpus_per_node: Annotated[StrictInt, Field(ge=0, le=64)] = 0
    # pretraining: processes per node, one per GPU by default (DDP from SLURM's environment);
    # a probe: as given (default 1; the infocl_imagenet protocol splits its batches over them);
    # stage two always runs one task per node, detectron2 starting a process per GPU
    tasks_per_node: Optional[Annotated[StrictInt, Field(ge=1, le=256)]] = None
    cpus_per_task: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    # at least 1 MB (0.0005 became --mem=0M: the whole node), at most 64 TB, finite (ours)
    mem_gb: Optional[Annotated[Union[StrictInt, StrictFloat], Field(ge=0.001, le=65536),
                               AfterValidator(_finite)]] = None
    time: Walltime = "4:00:00"


#: The stage kinds a `launch:` block gives resources to
STAGE_KINDS = ("pretrain", "convert", "probe", "classify", "finetune", "evaluate", "report")


#: {executor name: the model of its settings, `launch.NAME`}: each executor registers its own
#: (pipeline/executors/), so a new one adds keys without touching this schema
EXECUTOR_SETTINGS = {}


def register_executor_settings(name: str, settings: type) -> None:
    EXECUTOR_SETTINGS[name] = settings


def _known_executor(name: str) -> str:
    if name not in EXECUTOR_SETTINGS:
        raise ValueError(f"not an executor here (known: {', '.join(sorted(EXECUTOR_SETTINGS))})")
    return name


class Launch(Entry):
    """Where and how wide the stages run: `executor` names one (pipeline/executors/; local:
    this machine, slurm: every stage a job; docs/cluster.md), `launch.NAME` holds its own
    settings, and the resources every stage kind asks for are shared by all of them (as
    submitit's AutoExecutor splits them)."""

    executor: Annotated[StrictStr, AfterValidator(_known_executor)] = "local"
    # the network interface of multi-node process groups (GLOO_/NCCL_SOCKET_IFNAME); "": the
    # one that routes to the first node (ssl2det.distributed.choose_interface; ours)
    socket_ifname: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.:-]{0,15}$")] = ""
    pretrain: Resources = Resources(time="48:00:00")
    convert: Resources = Resources(time="0:30:00")
    probe: Resources = Resources(time="12:00:00")
    classify: Resources = Resources(time="4:00:00")
    finetune: Resources = Resources(time="24:00:00")
    evaluate: Resources = Resources(time="4:00:00")
    report: Resources = Resources(time="0:30:00")

    def resources(self, kind: str) -> Resources:
        return getattr(self, kind)

    def settings(self, executor: str):
        """The executor's settings block, its defaults where the run file has none."""
        return getattr(self, executor, None) or EXECUTOR_SETTINGS[executor]()


class Report(Entry):
    name: Name = "report"
    predictions: Annotated[StrictInt, Field(ge=0, le=100)] = 3


class RunFile(Entry):
    output_dir: Path = "output/pipeline"
    datasets: Datasets = Datasets()
    pretrain: list[PretrainEntry] = []
    probe: Optional[ProbeEntry] = None
    backbones: list[BackboneEntry] = []
    transfer: list[TransferEntry] = []
    classification: list[ClassificationEntry] = []
    repeats: Repeats = 1
    launch: Launch = Launch()
    report: Report = Report()



def _name_problems(raw: dict) -> list:
    """Names that do not fit together: used twice in one kind, a backbones entry named like a
    pretrain entry, a task naming a backbone no entry defines or twice, a baseline that is not
    one of the task's backbones. On the raw mapping, so that these come in the same list as
    the schema's problems (names that are not strings are the schema's to report)."""
    def entries(kind):
        value = raw.get(kind)
        return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []

    def names(kind):
        return [e.get("name") for e in entries(kind) if isinstance(e.get("name"), str)]
    problems = []
    for kind in ("pretrain", "backbones", "transfer", "classification"):
        found = names(kind)
        problems += [f"{kind}: the name {n!r} is used twice" for n in sorted(set(found))
                     if found.count(n) > 1]
    pretrained = set(names("pretrain"))
    problems += [f"backbones: {n!r} is also a pretrain entry's name"
                 for n in names("backbones") if n in pretrained]
    known = pretrained | set(names("backbones"))
    for i, task in enumerate(entries("transfer")):
        named = task.get("backbones")
        named = [b for b in named if isinstance(b, str)] if isinstance(named, list) else None
        unknown = [b for b in named or [] if b != RANDOM and b not in known]
        if unknown:
            problems.append(f"transfer[{i}].backbones: {unknown} are neither pretrain nor "
                            f"backbones entries (known: {sorted(known)} and '{RANDOM}')")
        twice = sorted({b for b in named or [] if named.count(b) > 1})
        if twice:
            problems.append(f"transfer[{i}].backbones: {twice} named twice")
        baseline = task.get("baseline")
        if isinstance(baseline, str) and baseline and baseline not in (
                named if named is not None else [RANDOM, *known]):
            problems.append(f"transfer[{i}].baseline: {baseline!r} is not one of the task's "
                            "backbones")
    for i, entry in enumerate(entries("classification")):
        named = entry.get("backbones")
        named = [b for b in named if isinstance(b, str)] if isinstance(named, list) else None
        unknown = [b for b in named or [] if b != RANDOM and b not in pretrained]
        if unknown:
            problems.append(f"classification[{i}].backbones: {unknown} are not pretrain entries "
                            f"(known: {sorted(pretrained)} and '{RANDOM}'; a weights file is "
                            "evaluated by its detection transfer)")
        baseline = entry.get("baseline")
        if isinstance(baseline, str) and baseline and baseline not in (
                named if named is not None else sorted(pretrained)):
            problems.append(f"classification[{i}].baseline: {baseline!r} is not one of its "
                            "backbones")
    return problems


def schema() -> type:
    """RunFile with `launch.NAME` blocks of the executors registered now."""
    names = tuple(sorted(EXECUTOR_SETTINGS))
    if _SCHEMAS.get("names") != names:
        blocks = {name: (Optional[EXECUTOR_SETTINGS[name]], None) for name in names}
        launch = create_model("Launch", __base__=Launch, **blocks)
        _SCHEMAS.update(names=names, model=create_model(
            "RunFile", __base__=RunFile, launch=(launch, launch())))
    return _SCHEMAS["model"]


_SCHEMAS = {}


def _moved_keys(raw: dict) -> list:
    """One line per key directly under `launch:` that is an executor's setting (where run files
    of earlier versions had them all), naming its block; removed from `raw`."""
    launch = raw.get("launch")
    if not isinstance(launch, dict):
        return []
    owner = {key: name for name, model in sorted(EXECUTOR_SETTINGS.items())
             for key in model.model_fields if key not in Launch.model_fields}
    lines = []
    for key in [k for k in launch if k in owner]:
        executor = owner[key]
        lines.append(f"launch.{key}: each executor's settings are in its own block now: write "
                     f"launch: {{{executor}: {{{key}: ...}}}} (launch.{executor}.{key})")
        del launch[key]
    return lines


def read_run_file(path: str) -> RunFile:
    """The run file at `path`, checked; a RunFileError lists every problem, one per line."""
    raw = read_yaml_mapping(path, "run file")
    moved = _moved_keys(raw)
    try:
        run_file, lines = schema().model_validate(raw), []
    except ValidationError as e:
        run_file, lines = None, messages(schema(), e.errors())
    lines = list(dict.fromkeys(moved + lines + _name_problems(raw)))
    if lines:
        raise RunFileError(f"{path}: {len(lines)} problem(s) in the run file "
                           "(docs/pipeline.md lists every key):\n"
                           + "\n".join(f"  - {line}" for line in lines))
    return run_file
