"""The orchestrator over both stages: a run file becomes a graph of stages (pretrain, convert,
probe, fine-tune, evaluate, report), planned against their records and run by an executor
(here, or as SLURM jobs); docs/architecture.md draws its layers."""

# Every executor registers the settings of its `launch.NAME` block with the run file's schema as
# it is defined: imported with the package, so that any reader of a run file knows them all.
from . import executors  # noqa: E402,F401
