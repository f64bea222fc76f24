"""`--dry-run`: what another executor would do, printed, and nothing done. For every stage that
would run: its job (command, resources, dependencies; the sbatch script under `slurm`). It asks
the executor it stands for where the runs stand (queued and running jobs are left to them), and
starts, submits, moves, cancels and records nothing."""

from .base import Executor


class DryRunExecutor(Executor):
    def __init__(self, executor):
        self.executor = executor
        self.name, self.launch, self.root = executor.name, executor.launch, executor.root
        self.settings = executor.settings

    def problems(self, stages):
        return self.executor.problems(stages)

    def live_runs(self, stages):
        return self.executor.live_runs(stages)

    def can_follow(self, state):
        return self.executor.can_follow(state)

    def start(self, stage, after, fingerprint, prefix=""):
        print(f"{prefix}: would run, {self.executor.name}:\n"
              f"{self.executor.describe(stage, after)}", flush=True)
        return f"<{stage.label}>"

    def set_aside(self, stage) -> list:
        print(f"[pipeline] {stage.label}: its outputs, made from other inputs, would be moved "
              "aside", flush=True)
        return []

    def cancel(self, run_ids) -> None:
        if run_ids:
            print(f"[pipeline] would cancel {', '.join(run_ids)}", flush=True)

    def report_started(self, started, live, seconds, report):
        print(f"[pipeline] dry run: {len(started)} stage(s) would run"
              + (f", {len(live)} already queued or running" if live else "")
              + "; nothing was started, submitted or written", flush=True)
