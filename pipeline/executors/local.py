"""`local`: this machine, one stage after another, each a child process (its output in the
stage's log, progress lines echoed).

As on a scheduler, `start` only records the run and queues it, and the runs are followed to
their end by `follow`: here that is what runs them, in the order they were started, each once
the runs it waits for have ended well (a stage after a failed one is not run, as SLURM's
afterok leaves it). Their states come from the same place as a scheduler's: a stage's entry
point holds its output folder while it runs (ssl2det.output_dir), the queue holds the rest.
"""

import os
import re
import shlex
import socket
import time
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, StrictInt

from ssl2det.output_dir import output_dir_holder
from ssl2det.process import run_logged

from ..run_file import Entry
from ..starts import SINGLE
from .base import Executor, Phase, RunState

_LOG_MESSAGE = re.compile(r"\[\d\d/\d\d \d\d:\d\d:\d\d [^\]]*\]:? (.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: the exit recorded for a run that did not start because a run it waits for failed
NOT_RUN = "not run"


def echo_progress(line: str):
    """Show the lines a person follows progress by; everything goes to the stage's log."""
    keys = ("eta:", "Inference done", "error:", "Error:", "Traceback", "kNN top-1",
            "continuing at iteration", "tensors mapped", "| bbox/", "| segm/", "| sem_seg/",
            "steps in ")
    line = _ANSI.sub("", line)
    if any(k in line for k in keys):
        message = _LOG_MESSAGE.search(line)  # drop progress-bar residue before a log message
        print("    " + (message.group(1) if message else line.strip())[:160], flush=True)


class LocalSettings(Entry):
    """`launch.local`: this machine's GPUs a stage uses (> 1: pretraining through torchrun,
    train_net --num-gpus; 0: one process, on a GPU if there is one)."""

    num_gpus: Annotated[StrictInt, Field(ge=0, le=1024)] = 0


@dataclass
class _Queued:
    stage: object
    after: list
    prefix: str
    run_id: str


class LocalExecutor(Executor):
    name, settings_model = "local", LocalSettings
    follow_by_default = True

    def __init__(self, launch, root, echo=echo_progress):
        super().__init__(launch, root)
        self.echo = echo
        self._queue = []  # started here, not yet run
        self._ended = {}  # {run id: exit code, or NOT_RUN}

    def command(self, stage) -> list:
        """One machine's command: ranks or GPUs as `launch.local.num_gpus` asks (one process
        for a stage that runs as one)."""
        processes = 1 if stage.starts == SINGLE else max(1, self.settings.num_gpus)
        return [str(c) for c in stage.command(processes)]

    def can_follow(self, state) -> bool:
        return False  # another process's run: its own process follows it

    def live_runs(self, stages) -> dict:
        queued = {item.stage.key: item.run_id for item in self._queue}
        live = {}
        for stage in stages:
            holder = output_dir_holder(str(stage.folder))
            if holder:
                live[stage.key] = RunState(Phase.RUNNING, holder, cancel="stop that process",
                                           run_id=stage.record.run["id"], by=self.name)
            elif stage.key in queued:
                live[stage.key] = RunState(Phase.QUEUED, f"local run {queued[stage.key]}",
                                           cancel="stop this pipeline",
                                           run_id=queued[stage.key], by=self.name)
        return live

    def start(self, stage, after, fingerprint, prefix=""):
        run_id = f"{socket.gethostname()}:{os.getpid()}:{len(self._queue) + len(self._ended)}"
        stage.record.write(hash=fingerprint, command=self.command(stage),
                           config=stage.effective_config(),
                           run={"executor": self.name, "id": run_id}, queued=time.time())
        self._queue.append(_Queued(stage, list(after), prefix, run_id))
        return run_id

    def follow(self, stages) -> dict:
        """Run the queued stages (the module docstring); returns their states."""
        while self._queue:
            item = self._queue.pop(0)
            failed = [r for r in item.after if self._ended.get(r, 0) != 0]
            if failed:
                item.stage.record.update(exit=NOT_RUN, finished=time.time())
                self._ended[item.run_id] = NOT_RUN
                print(f"{item.prefix}: not run, a stage it reads did not complete", flush=True)
                continue
            self._ended[item.run_id] = self._run(item)
        return self.states(stages)

    def _run(self, item: _Queued) -> int:
        stage = item.stage
        print(f"{item.prefix} ...", flush=True)
        started = time.time()
        stage.record.update(started=started)
        stage.folder.mkdir(parents=True, exist_ok=True)
        code = run_logged(self.command(stage), stage.log_path, self.echo)
        if code:
            stage.record.update(exit=code, finished=time.time())
            print(f"{item.prefix}: FAILED (exit {code}); its log: {stage.log_path}", flush=True)
        else:
            stage.record.update(seconds=round(time.time() - started, 1), finished=time.time())
            print(f"{item.prefix}: done in {time.time() - started:.0f} s", flush=True)
        return code

    def cancel(self, run_ids) -> None:
        """Drop queued runs (a run that started is this process's child: it ends with it)."""
        self._queue = [item for item in self._queue if item.run_id not in set(run_ids)]

    def describe(self, stage, after) -> str:
        return (f"  command: {shlex.join(self.command(stage))}\n"
                f"  log: {stage.log_path}\n  after: {', '.join(after) or '(nothing)'}")
