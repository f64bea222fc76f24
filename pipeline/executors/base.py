"""The executor interface: everything that differs between running the stages here and on a
scheduler. The plan (pipeline/plan.py) decides what runs; an executor checks that it can
(`problems`), says where each stage's last run stands (`states`, one batched query), starts a
stage after the stages it reads (`start`), follows the runs to their end (`follow`) and cancels
one (`cancel`). Nothing outside this package asks which executor it has."""

import enum
import time
from dataclasses import dataclass
from pathlib import Path

from ssl2det.errors import PREEMPTED, UserError
from ssl2det.process import log_tail

from ..record import run_of
from ..run_file import register_executor_settings


class Phase(enum.Enum):
    NOT_STARTED = "not started"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETE = "complete"
    FAILED = "FAILED"
    INTERRUPTED = "interrupted"
    UNKNOWN = "unknown"


LIVE = (Phase.QUEUED, Phase.RUNNING)


@dataclass(frozen=True)
class RunState:
    """Where a stage's last run stands. `run_id`: the id its executor (`by`) gave it; `where`:
    the run as a person reads it ("job 12"); `detail`: why it failed (its log and last line),
    or why its state is unknown; `cancel`: how a person cancels it."""

    phase: Phase
    where: str = ""
    detail: str = ""
    cancel: str = ""
    run_id: str = ""
    by: str = ""
    #: the executor knows how the run ended (or that it cannot know): the stage's record and
    #: outputs do not change it
    settled: bool = False

    @property
    def live(self) -> bool:
        return self.phase in LIVE

    def describe(self) -> str:
        if self.phase in LIVE:
            return f"{self.phase.value} ({self.where})"
        if self.phase is Phase.FAILED:
            return f"FAILED ({self.where}): {self.detail}"
        if self.phase is Phase.UNKNOWN:
            return f"unknown ({self.where}: {self.detail})"
        if self.phase is Phase.INTERRUPTED:
            return (f"interrupted ({self.where}): {self.detail}" if self.where else
                    "interrupted (outputs, no finished run)")
        return self.phase.value


class SchedulerError(UserError):
    """The scheduler did not answer a query: nothing may be decided from its silence."""


def failure_detail(stage, record: dict) -> str:
    """The exit code of a stage's failed run, the process that failed first where a run of
    several recorded it (its rank and machine), and the last line of that process's log."""
    failed = record.get("failed") if isinstance(record.get("failed"), dict) else {}
    log = Path(failed.get("log") or stage.log_path)
    last = log_tail(log, 1).strip() if log.is_file() else "(no log)"
    who = (f"rank {failed['rank']} on {failed.get('host', '?')}, "
           if "rank" in failed and failed.get("ranks", 1) > 1 else "")
    if record.get("exit") == "not run":  # (local: a run it waited for failed)
        return "not run: a stage it reads did not complete"
    code = f"exit {record['exit']}, " if "exit" in record else ""
    return f"{code}{who}log {log}: {last[:200]}"


#: {name: executor class}: every named subclass of Executor, as it is defined
EXECUTORS = {}


class Executor:
    """Where the stages run. A subclass names itself (`name`, recorded with each run it starts),
    declares the model of its settings (`settings_model`: the run file's `launch.NAME` block,
    checked with the schema) and implements `start`, `live_runs`, `cancel` and `describe`; the
    rest has a default."""

    name = ""
    settings_model = None
    #: the pipeline follows the runs to their end unless told otherwise (local: the runs are
    #: this process's children, and follow() runs them); a scheduler's run without --wait
    follow_by_default = False
    #: seconds between two looks at the runs' states while they go on: the first, and the
    #: most (it grows by half after each look that saw no change)
    poll_s, max_poll_s = 2.0, 60.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name:
            EXECUTORS[cls.name] = cls
            if cls.settings_model is not None:
                register_executor_settings(cls.name, cls.settings_model)

    def __init__(self, launch, root):
        self.launch, self.root = launch, Path(root) if root is not None else None
        self.settings = launch.settings(self.name) if self.settings_model else None

    def problems(self, stages) -> list:
        """What keeps this executor from running `stages`, one line each."""
        return []

    def live_runs(self, stages) -> dict:
        """{stage key: RunState} of the given stages' recorded runs of this executor that it
        still knows: queued or running, or ended (Phase.FAILED, `detail`: how it ended); a
        SchedulerError when that cannot be known."""
        raise NotImplementedError

    def can_follow(self, state: RunState) -> bool:
        """Whether a stage may wait for that live run (rather than refuse to run beside it)."""
        return state.by == self.name

    def set_aside(self, stage) -> list:
        """Move the outputs of other inputs out of the way; returns where they went."""
        return stage.set_aside()

    def start(self, stage, after: list, fingerprint: str, prefix: str = "") -> str:
        """Start `stage` once the runs `after` (ids this executor gave) have succeeded; record
        it (its `run`, the hash of its inputs); `prefix` begins the lines it prints. Returns
        the run's id."""
        raise NotImplementedError

    def cancel(self, run_ids) -> None:
        raise NotImplementedError

    def describe(self, stage, after: list) -> str:
        """The job `start` would make of `stage` (what --dry-run prints)."""
        raise NotImplementedError

    def report_started(self, started: dict, live: dict, seconds: float, report) -> None:
        """One line after `start` has been called for every stage that runs."""

    def states(self, stages) -> dict:
        """{stage key: RunState} for every stage, from one query per executor that has runs
        recorded among them (a run started by another executor is asked of that one)."""
        records = {stage.key: stage.record.read() for stage in stages}  # each file read once
        runs = {key: run_of(record) for key, record in records.items()}
        by_executor = {}
        for stage in stages:
            if runs[stage.key]:
                by_executor.setdefault(runs[stage.key]["executor"], []).append(stage)
        polled, unknown = {}, {}
        for name, recorded in by_executor.items():
            try:
                executor = self if name == self.name else executor_for(name, self)
                polled.update(executor.live_runs(recorded))
            except SchedulerError as e:  # (each stage's own record named: which file says so)
                unknown.update({stage.key: f"{e} (its record: {stage.record.path})"
                                for stage in recorded})
        states = {}
        for stage in stages:
            record, run = records[stage.key], runs[stage.key]
            where = f"{run['executor']} run {run.get('id', '')}" if run else ""
            known = polled.get(stage.key, RunState(Phase.NOT_STARTED, where))
            if known.live or known.settled:
                state = known
            elif stage.is_complete():
                state = RunState(Phase.COMPLETE, where)
            elif stage.key in unknown:
                state = RunState(Phase.UNKNOWN, where, unknown[stage.key])
            elif run or "exit" in record:
                detail = failure_detail(stage, record)
                # a run that ended without saying how (killed, its node lost) or was stopped by
                # a preemption signal, and left outputs to resume from, was interrupted; one
                # that exited with an error failed
                interrupted = record.get("exit", PREEMPTED) == PREEMPTED and stage.has_outputs()
                state = RunState(Phase.INTERRUPTED if interrupted else Phase.FAILED, known.where,
                                 f"{known.detail}, {detail}" if known.detail else detail)
            elif stage.has_outputs():
                state = RunState(Phase.INTERRUPTED)
            else:
                state = RunState(Phase.NOT_STARTED)
            states[stage.key] = state
        return states

    def follow(self, stages) -> dict:
        """Print each stage's changes of state until none is queued or running; returns the
        last states. The looks back off from `poll_s` to `max_poll_s` while nothing changes (a
        48-hour wait asks the scheduler about 3,000 times, not 86,000)."""
        seen, wait = {}, self.poll_s
        while True:
            states = self.states(stages)
            changed = False
            for stage in stages:
                line = states[stage.key].describe()
                if seen.get(stage.key) != line:
                    seen[stage.key], changed = line, True
                    print(f"[pipeline] {stage.label}: {line}", flush=True)
            if not any(state.live for state in states.values()):
                return states
            wait = self.poll_s if changed else min(self.max_poll_s, wait * 1.5)
            time.sleep(wait)


def executor_for(name: str, like: Executor) -> Executor:
    """The executor that started a recorded run, with `like`'s settings (its state is asked of
    it); a name this version does not know is a SchedulerError (the run's state is unknown)."""
    if name not in EXECUTORS:
        raise SchedulerError(f"the run was started by an executor named {name!r}, which this "
                             f"version does not have ({', '.join(EXECUTORS)})")
    return EXECUTORS[name](like.launch, like.root)
