"""How a stage's processes start: the words between the stages and the executors. Here, not in
stages/, so that an executor's own process (every SLURM job's wrapper, `--status`) reads them
without importing every stage kind and, through pretraining's config, torch (seconds a
process)."""

RANKS, LAUNCHER, SINGLE = "one process per rank", "one launcher per machine", "one process"
