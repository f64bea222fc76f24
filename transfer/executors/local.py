"""`local`: this machine, one stage after another, each a child process the pipeline waits for
(its output in the stage's log, progress lines echoed)."""

import os
import re
import shlex
import socket
import time

from ssl2det.output_dir import output_dir_holder
from ssl2det.process import log_tail, run_logged

from ..spec import PipelineError
from ..stages import SINGLE
from .base import Executor, Phase, RunState

_LOG_MESSAGE = re.compile(r"\[\d\d/\d\d \d\d:\d\d:\d\d [^\]]*\]:? (.*)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def echo_progress(line: str):
    """Show the lines a person follows progress by; everything goes to the stage's log."""
    keys = ("eta:", "Inference done", "error:", "Error:", "Traceback", "kNN top-1",
            "continuing at iteration", "tensors mapped", "| bbox/", "| segm/", "| sem_seg/")
    line = _ANSI.sub("", line)
    if any(k in line for k in keys):
        message = _LOG_MESSAGE.search(line)  # drop progress-bar residue before a log message
        print("    " + (message.group(1) if message else line.strip())[:160], flush=True)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, launch, root, echo=echo_progress):
        self.launch, self.root, self.echo = launch, root, echo

    def command(self, stage) -> list:
        """One machine's command: ranks or GPUs as `launch.num_gpus` asks (one process for a
        stage that runs as one)."""
        processes = 1 if stage.starts == SINGLE else max(1, self.launch.num_gpus)
        return [str(c) for c in stage.command(processes)]

    def live_runs(self, stages) -> dict:
        # a stage's entry point holds its output folder while it runs (ssl2det.output_dir)
        live = {}
        for stage in stages:
            holder = output_dir_holder(str(stage.folder))
            if holder:
                live[stage.key] = RunState(Phase.RUNNING, holder, cancel="stop that process",
                                           run_id=stage.record.run["id"], by=self.name)
        return live

    def start(self, stage, after, fingerprint, prefix=""):
        print(f"{prefix} ...", flush=True)
        command = self.command(stage)
        started = time.time()
        run_id = f"{socket.gethostname()}:{os.getpid()}"
        stage.record.write(hash=fingerprint, command=command, config=stage.effective_config(),
                           run={"executor": self.name, "id": run_id}, started=started)
        stage.folder.mkdir(parents=True, exist_ok=True)
        code = run_logged(command, stage.log_path, self.echo,
                          env=dict(os.environ, PYTHONWARNINGS="ignore::FutureWarning"))
        if code != 0:
            stage.record.update(exit=code, finished=time.time())
            log = stage.log_path
            raise PipelineError(f"stage {stage.label} failed (exit {code}). Last lines of "
                                f"{log}:\n{log_tail(log)}\nFix the cause and run the same "
                                "command again: finished stages are skipped, this one resumes.")
        stage.record.update(seconds=round(time.time() - started, 1), finished=time.time())
        print(f"{prefix}: done in {time.time() - started:.0f} s", flush=True)
        return run_id

    def cancel(self, run_ids) -> None:
        """Nothing to cancel: a local run ended when `start` returned."""

    def describe(self, stage, after) -> str:
        return (f"  command: {shlex.join(self.command(stage))}\n"
                f"  log: {stage.log_path}\n  after: {', '.join(after) or '(nothing)'}")
