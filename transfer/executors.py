"""Where the pipeline's stages run (`launch: {executor: ...}`, `--executor`).

`local`: this machine, one stage after another, each a child process (the pipeline waits).

`slurm`: every stage that is not complete becomes a SLURM job, submitted through submitit, with
`afterok` dependencies from the stage graph (a fine-tuning waits for its conversion, a
conversion for its pretraining, the report for everything), so the whole study is queued in one
call and independent stages run at once. The job ids are recorded in each stage's record, so a
second submission leaves queued and running jobs alone and submits only what failed or changed.
A job asks SLURM for a warning signal `signal_delay_s` before its time limit (submitit's
USR2); the stage, which gets the signal too, writes a checkpoint and stops, and the job is
requeued (`scontrol requeue`: the same id, its dependents keep waiting) and resumes from it. A
pretraining job of N nodes x G tasks is N x G processes whose DDP comes from SLURM's
environment (ssl2det.distributed); a fine-tuning job is one task per node, detectron2 starting
a process per GPU with --num-machines / --machine-rank / --dist-url from SLURM's.

Before anything is submitted, `cluster_problems` checks the cluster: sbatch on PATH, the
partition there, every stage kind's nodes, GPUs, CPUs, memory and time within it. Every problem
in one list, nothing submitted. docs/cluster.md.
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ssl2det.distributed import slurm_master_address
from ssl2det.errors import UserError
from ssl2det.io import atomic_write
from ssl2det.process import log_tail, start_logged

from .run_file import STAGE_KINDS, walltime_minutes

#: squeue's states of a job that is not over (it will run, or is running)
ALIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
         "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
SLURM_FOLDER = "slurm"  # OUTPUT_DIR/slurm/JOBID/: submitit's files of each job


class ClusterError(UserError):
    """The cluster cannot take the run as its launch: block asks; bad input, exit 2."""

    exit_code = 2


class StageFailedError(UserError, RuntimeError):
    """A stage's job ended with an error; the message names its log."""


# --- the cluster -----------------------------------------------------------------------------

def _run(argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


def job_states(job_ids) -> dict:
    """{job id: squeue state} of the jobs SLURM still knows about as queued, running or just
    ended; a job it has forgotten is absent."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids or not shutil.which("squeue"):
        return {}
    try:
        out = _run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i %T"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return {}  # e.g. every id already forgotten: squeue errors on unknown ids
    states = {}
    for line in out.splitlines():
        job, _, state = line.strip().partition(" ")
        states[job.split("_")[0]] = state
    return states


def _partitions() -> dict:
    """{partition: {nodes, cpus, memory_mb, gpus, minutes (None: no limit), default}} from
    sinfo (the largest node of each partition)."""
    found = {}
    for line in _run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%G|%l"]).splitlines():
        name, nodes, cpus, memory, gres, limit = line.strip().split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus = max([int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres)] or [0])
        minutes = None if limit in ("infinite", "UNLIMITED") else walltime_minutes(limit)
        entry = found.setdefault(name, {"nodes": 0, "cpus": 0, "memory_mb": 0, "gpus": 0,
                                        "minutes": minutes, "default": default})
        entry["nodes"] += int(nodes)
        entry["cpus"] = max(entry["cpus"], int(cpus.rstrip("+")))
        entry["memory_mb"] = max(entry["memory_mb"], int(memory.rstrip("+")))
        entry["gpus"] = max(entry["gpus"], gpus)
    return found


def tasks_per_node(kind: str, resources) -> int:
    """Processes per node: pretraining one per GPU (or as asked); a probe as asked (the
    infocl_imagenet protocol splits its batches over them); stage two one (detectron2 starts a
    process per GPU itself); the other stages one."""
    if kind == "pretrain":
        return resources.tasks_per_node or max(1, resources.gpus_per_node)
    if kind == "probe":
        return resources.tasks_per_node or 1
    return 1


def cluster_problems(launch, kinds) -> list:
    """What keeps the cluster from taking the stage kinds `kinds` as `launch` asks; one line
    per problem, none when it can."""
    missing = [tool for tool in ("sbatch", "squeue", "sinfo", "scontrol") if not shutil.which(tool)]
    if missing:
        return [f"launch: executor slurm, but {', '.join(missing)} not on PATH: run the pipeline "
                "on a machine of the cluster (a login node), or start the one-node test cluster "
                "(bash tools/slurm/local_cluster.sh start)"]
    try:
        partitions = _partitions()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as e:
        return [f"launch: sinfo does not answer ({str(e).strip()[:200]}): is slurmctld up?"]
    name = launch.partition or next((p for p, v in partitions.items() if v["default"]), "")
    if name not in partitions:
        return [f"launch.partition: {launch.partition or '(the default)'} does not exist here "
                f"(sinfo: {', '.join(partitions) or 'no partition'})"]
    part, problems = partitions[name], []
    for kind in kinds:
        r = launch.resources(kind)
        tasks = tasks_per_node(kind, r)
        asked = (f"launch.{kind} asks {r.nodes} node(s) x {r.gpus_per_node} GPU(s), "
                 f"{tasks * r.cpus_per_task} CPU(s)" + (f", {r.mem_gb:g} GB" if r.mem_gb else "")
                 + " per node")
        has = (f"partition {name} has {part['nodes']} node(s) with at most {part['gpus']} "
               f"GPU(s), {part['cpus']} CPU(s), {part['memory_mb'] / 1024:.0f} GB")
        if r.gpus_per_node > part["gpus"]:  # a GPU job on this partition: one line says it
            problems.append(f"{asked}: {has} (too few GPUs)")
            continue
        short = [what for what, fits in (
            ("nodes", r.nodes <= part["nodes"]), ("CPUs", tasks * r.cpus_per_task <= part["cpus"]),
            ("memory", not r.mem_gb or r.mem_gb * 1024 <= part["memory_mb"])) if not fits]
        if short:
            problems.append(f"{asked}: {has} (too few {', '.join(short)})")
        if part["minutes"] is not None and walltime_minutes(r.time) > part["minutes"]:
            problems.append(f"launch.{kind}.time {r.time} exceeds partition {name}'s limit of "
                            f"{part['minutes']} minutes")
    return problems


# --- one stage's job ---------------------------------------------------------------------------

class StageJob:
    """What each task of a stage's SLURM job runs: the stage's command, its output written to
    the stage's log by the command itself (rank 0; rank k to LOG.rankK). On submitit's warning
    signal (time limit near, or `scancel --signal=USR2`) the stage, signalled too, writes its
    checkpoint and stops; `checkpoint` waits for that, and submitit requeues the job, which
    then resumes. On success rank 0 adds the wall time to the stage's record."""

    def __init__(self, command, log, record, kind, nodes, label):
        self.command, self.log, self.record = [str(c) for c in command], str(log), str(record)
        self.kind, self.nodes, self.label = kind, nodes, label
        self._proc = None

    def __getstate__(self):  # the running child is not part of a (re)submission
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def _task_command(self):
        if self.kind in ("finetune", "evaluate") and self.nodes > 1:
            host, port = slurm_master_address()
            return [*self.command, "--num-machines", str(self.nodes), "--machine-rank",
                    os.environ.get("SLURM_NODEID", "0"), "--dist-url", f"tcp://{host}:{port}"]
        return self.command

    def __call__(self):
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        log = self.log if rank == 0 else f"{self.log}.rank{rank}"
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        self._proc = start_logged(self._task_command(), log)
        code = self._proc.wait()
        if code:
            raise StageFailedError(f"stage {self.label} failed (exit {code}); last lines of "
                                   f"{log}:\n{log_tail(log)}")
        if rank == 0:
            _update_record(self.record, seconds=round(time.time() - started, 1),
                           started=started, finished=time.time())
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit in its signal handler, while __call__ waits for the child."""
        from submitit.helpers import DelayedSubmission

        if self._proc is not None:
            # (not Popen.wait: the interrupted wait in __call__ holds its lock)
            while os.waitpid(self._proc.pid, os.WNOHANG) == (0, 0):
                time.sleep(0.1)  # its checkpoint is written when it exits
        return DelayedSubmission(self)


def _update_record(path, **values):
    record = json.loads(Path(path).read_text()) if os.path.isfile(path) else {}
    record.update(values)
    text = json.dumps(record, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))


# --- the executors -----------------------------------------------------------------------------

class LocalExecutor:
    """Each stage in turn on this machine, as a child process of the pipeline."""

    name = "local"

    def problems(self, stages) -> list:
        return []

    def run(self, todo, hashes, echo) -> None:
        for prefix, stage in todo:
            print(f"{prefix} ...", flush=True)
            started = time.time()
            stage.write_record(hashes[stage.key])
            stage.run(echo)
            stage.write_record(hashes[stage.key], seconds=time.time() - started)
            print(f"{prefix}: done in {time.time() - started:.0f} s", flush=True)


class SlurmExecutor:
    """Every stage a SLURM job through submitit (the module docstring)."""

    name = "slurm"

    def __init__(self, launch, root: Path):
        self.launch, self.root = launch, Path(root)

    def problems(self, stages) -> list:
        kinds = {s.kind for s in stages} | {"report"}
        return cluster_problems(self.launch, [k for k in STAGE_KINDS if k in kinds])

    def _executor(self, kind: str, dependencies):
        import submitit

        r = self.launch.resources(kind)
        executor = submitit.SlurmExecutor(folder=str(self.root / SLURM_FOLDER / "%j"),
                                          max_num_timeout=self.launch.max_requeues)
        extra = {**self.launch.sbatch}
        if dependencies:
            extra.update({"dependency": "afterok:" + ":".join(dependencies),
                          "kill-on-invalid-dep": "yes"})
        if self.launch.account:
            extra["account"] = self.launch.account
        if r.mem_gb:
            extra["mem"] = f"{int(r.mem_gb * 1024)}M"
        executor.update_parameters(
            job_name=f"ssl2det-{kind}", nodes=r.nodes, ntasks_per_node=tasks_per_node(kind, r),
            cpus_per_task=r.cpus_per_task, time=walltime_minutes(r.time),
            signal_delay_s=self.launch.signal_delay_s, setup=list(self.launch.setup),
            additional_parameters=extra,
            **({"gpus_per_node": r.gpus_per_node} if r.gpus_per_node else {}),
            **({"partition": self.launch.partition} if self.launch.partition else {}),
            **({"qos": self.launch.qos} if self.launch.qos else {}))
        return executor

    def submit(self, stage, command, dependencies) -> str:
        """Submit one stage; returns its job id."""
        r = self.launch.resources(stage.kind)
        job = self._executor(stage.kind, dependencies).submit(StageJob(
            command, stage.log_path, stage.record, stage.kind, r.nodes, stage.label))
        return str(job.job_id)


def build_executor(name: str, launch, root):
    if name == "slurm":
        return SlurmExecutor(launch, root)
    return LocalExecutor()
