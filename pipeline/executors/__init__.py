"""Where the pipeline's stages run (`launch: {executor: ...}`, `--executor`, `--dry-run`): the
interface (base.py) and its implementations, `local` (this machine), `slurm` (every stage a
SLURM job through submitit) and the dry run (what either would do, printed). Every module here
is imported, so an executor (which registers itself and its settings as it is defined) is one
new file."""

import importlib
import pkgutil

from .base import EXECUTORS, Executor, Phase, RunState, SchedulerError
from .dry_run import DryRunExecutor
from .local import LocalExecutor, LocalSettings, echo_progress
from .slurm import ClusterError, SlurmExecutor, SlurmSettings

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["EXECUTORS", "ClusterError", "DryRunExecutor", "Executor", "LocalExecutor",
           "LocalSettings", "Phase", "RunState", "SchedulerError", "SlurmExecutor",
           "SlurmSettings", "build_executor", "echo_progress"]


def build_executor(name: str, launch, root, dry_run: bool = False) -> Executor:
    executor = EXECUTORS[name](launch, root)
    return DryRunExecutor(executor) if dry_run else executor
