"""Where the pipeline's stages run (`launch: {executor: ...}`, `--executor`, `--dry-run`): the
interface (base.py) and its implementations, `local` (this machine), `slurm` (every stage a
SLURM job through submitit) and the dry run (what either would do, printed)."""

from .base import EXECUTORS, Executor, Phase, RunState, SchedulerError
from .dry_run import DryRunExecutor
from .local import LocalExecutor, echo_progress
from .slurm import ClusterError, SlurmExecutor

__all__ = ["EXECUTORS", "ClusterError", "DryRunExecutor", "Executor", "LocalExecutor", "Phase",
           "RunState", "SchedulerError", "SlurmExecutor", "build_executor", "echo_progress"]


def build_executor(name: str, launch, root, dry_run: bool = False) -> Executor:
    executor = EXECUTORS[name](launch, root)
    return DryRunExecutor(executor) if dry_run else executor
