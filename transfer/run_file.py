"""The run file's schema: every key a pipeline run file may hold, with its type and bounds
(pydantic v2 models, `extra="forbid"`, strict types). A run file is checked whole before
anything else happens; every problem is reported at once, each naming the file, the key path
(`transfer[0].basline`), what was expected and, for a misspelt key, the closest allowed one.

Names become folder and file names (transfer/layout.py), so they are one pattern: a letter or
digit, then letters, digits, `_`, `-`, `.` (at most 64), never `NAME-seedN` (the names of seed
replicates) and, for backbones, never `random` (the randomly initialised one). Names are unique
per kind.
"""

import difflib
import math
import re
from typing import Annotated, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat,
                      StrictInt, StrictStr, ValidationError)

from pretrain.eval.linear import PROTOCOLS
from ssl2det.config import read_yaml_mapping
from ssl2det.errors import UserError

from .layout import RANDOM

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
    """What one stage's SLURM job asks for (transfer/executors/)."""

    nodes: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    gpus_per_node: Annotated[StrictInt, Field(ge=0, le=64)] = 0
    # pretraining: processes per node, one per GPU by default (DDP from SLURM's environment);
    # a probe: as given (default 1; the infocl_imagenet protocol splits its batches over them);
    # stage two always runs one task per node, detectron2 starting a process per GPU
    tasks_per_node: Optional[Annotated[StrictInt, Field(ge=1, le=256)]] = None
    cpus_per_task: Annotated[StrictInt, Field(ge=1, le=1024)] = 1
    mem_gb: Optional[Annotated[Union[StrictInt, StrictFloat], Field(gt=0)]] = None
    time: Walltime = "4:00:00"


#: sbatch options the launch block sets and the pre-flight checks: {option: the key to use}
SET_BY_LAUNCH = {
    "partition": "launch.partition", "p": "launch.partition", "account": "launch.account",
    "A": "launch.account", "qos": "launch.qos", "q": "launch.qos",
    "time": "launch.KIND.time", "t": "launch.KIND.time", "nodes": "launch.KIND.nodes",
    "N": "launch.KIND.nodes", "gpus": "launch.KIND.gpus_per_node",
    "gpus-per-node": "launch.KIND.gpus_per_node", "gres": "launch.KIND.gpus_per_node",
    "G": "launch.KIND.gpus_per_node", "cpus-per-task": "launch.KIND.cpus_per_task",
    "c": "launch.KIND.cpus_per_task", "ntasks": "launch.KIND.tasks_per_node",
    "n": "launch.KIND.tasks_per_node", "ntasks-per-node": "launch.KIND.tasks_per_node",
    "mem": "launch.KIND.mem_gb", "mem-per-cpu": "launch.KIND.mem_gb",
    "mem-per-gpu": "launch.KIND.mem_gb", "dependency": "(the stage graph)",
    "d": "(the stage graph)", "kill-on-invalid-dep": "(the stage graph)",
    "job-name": "(the stage's kind)", "J": "(the stage's kind)",
    "output": "(the stage's log and output_dir/slurm/)", "o": "(the stage's log)",
    "error": "(the stage's log)", "e": "(the stage's log)",
    "signal": "launch.signal_delay_s"}


def _sbatch_options(options: dict) -> dict:
    problems = []
    for key, value in options.items():
        name = key.replace("_", "-") if len(key) > 1 else key
        if name in SET_BY_LAUNCH:
            problems.append(f"{key} is set by the launch block: use {SET_BY_LAUNCH[name]}")
        elif not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            problems.append(f"{key!r} is not an sbatch option name")
        elif isinstance(value, str) and (not value or re.search(r"[\x00-\x1f\x7f]", value)):
            problems.append(f"{key}: {value!r} would break the job script (empty, or a newline "
                            "or other control character)")
    if problems:
        raise ValueError("; ".join(problems))
    return options


#: The stage kinds a `launch:` block gives resources to
STAGE_KINDS = ("pretrain", "convert", "probe", "finetune", "evaluate", "report")


class Launch(Entry):
    """Where and how wide the stages run: `local` (this machine, one stage after another) or
    `slurm` (every stage a job, transfer/executors/; docs/cluster.md)."""

    executor: Literal["local", "slurm"] = "local"
    num_gpus: Annotated[StrictInt, Field(ge=0, le=1024)] = 0  # local: > 1 torchrun, --num-gpus
    partition: StrictStr = ""  # "" : the cluster's default partition
    account: StrictStr = ""
    qos: StrictStr = ""
    setup: list[StrictStr] = []  # shell lines run before each job (module load, activate)
    # further sbatch options, e.g. {constraint: a100, exclusive: true}; true: a flag
    sbatch: Annotated[dict[StrictStr, Union[StrictStr, StrictInt, StrictBool]],
                      AfterValidator(_sbatch_options)] = {}
    signal_delay_s: Annotated[StrictInt, Field(ge=10, le=3600)] = 120  # warning before the limit
    max_requeues: Annotated[StrictInt, Field(ge=0, le=100)] = 3  # after time limits, per job
    # the network interface of multi-node process groups (GLOO_/NCCL_SOCKET_IFNAME); "": the
    # one that routes to the first node (ssl2det.distributed.choose_interface; ours)
    socket_ifname: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.:-]{0,15}$")] = ""
    pretrain: Resources = Resources(time="48:00:00")
    convert: Resources = Resources(time="0:30:00")
    probe: Resources = Resources(time="12:00:00")
    finetune: Resources = Resources(time="24:00:00")
    evaluate: Resources = Resources(time="4:00:00")
    report: Resources = Resources(time="0:30:00")

    def resources(self, kind: str) -> Resources:
        return getattr(self, kind)


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
    for kind in ("pretrain", "backbones", "transfer"):
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
    return problems


# --- messages --------------------------------------------------------------------------------

def _location(loc) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "json-or-python") or "[" in str(part):
            continue  # pydantic's names of validator steps, not keys
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_at(loc):
    """The model whose fields the key at `loc` is one of (for 'did you mean')."""
    model = RunFile
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            inner = (candidate, *getattr(candidate, "__args__", ()))
            found = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)),
                         None)
            if found:
                model = found
                break
        else:
            return None
    return model


def _message(error) -> str:
    loc, kind = error["loc"], error["type"]
    where = _location(loc) or "the file"
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{where}: unknown key{hint} (allowed: {', '.join(allowed)})"
    text = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    shown = "" if isinstance(given, (dict, BaseModel)) else f", got {given!r}"[:120]
    return f"{where}: {text}{shown}"


_UNION_TAG = re.compile(r"^(str|int|float|bool|none|list|dict)$|^[a-z-]+\[")
_TYPE_WORDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false"}


def _messages(errors) -> list:
    """One line per key: a value that fits no member of a union (StrictStr | StrictInt | ...)
    is one line naming the key and the types it may have, not one per member under the
    members' names as if they were keys."""
    lines, unions = [], {}
    for error in errors:
        loc = error["loc"]
        if loc and isinstance(loc[-1], str) and _UNION_TAG.match(loc[-1]):
            unions.setdefault(loc[:-1], (error, []))[1].append(loc[-1])
        else:
            lines.append(_message(error))
    for loc, (error, tags) in unions.items():
        kinds = " or ".join(dict.fromkeys(_TYPE_WORDS.get(t, t) for t in tags))
        shown = f", got {error.get('input')!r}"[:120]
        lines.append(f"{_location(loc) or 'the file'}: should be {kinds}{shown}")
    return lines


def read_run_file(path: str) -> RunFile:
    """The run file at `path`, checked; a RunFileError lists every problem, one per line."""
    raw = read_yaml_mapping(path, "run file")
    try:
        run_file, lines = RunFile.model_validate(raw), []
    except ValidationError as e:
        run_file, lines = None, _messages(e.errors())
    lines = list(dict.fromkeys(lines + _name_problems(raw)))
    if lines:
        raise RunFileError(f"{path}: {len(lines)} problem(s) in the run file "
                           "(docs/pipeline.md lists every key):\n"
                           + "\n".join(f"  - {line}" for line in lines))
    return run_file
