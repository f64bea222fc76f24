"""`slurm`: every stage that is not complete becomes a SLURM job, submitted through submitit,
with `afterok` dependencies from the stage graph (a fine-tuning waits for its conversion, a
conversion for its pretraining, the report for everything), so the whole study is queued in one
call and independent stages run at once. The job ids are recorded in each stage's record, so a
second submission leaves queued and running jobs alone and submits only what failed or changed.

A job asks SLURM for a warning signal `signal_delay_s` before its time limit (submitit's
USR2); the stage, which gets the signal too, writes a checkpoint and stops, and the job is
requeued (`scontrol requeue`: the same id, its dependents keep waiting) and resumes from it.
How a stage's processes start decides its tasks: one task per rank (pretraining: N nodes x G
tasks, DDP from SLURM's environment, ssl2det.distributed), one task per node whose launcher
starts a process per GPU (fine-tuning: detectron2's --num-machines / --machine-rank /
--dist-url from SLURM's environment), or one task; the tasks of a job meet at a port rank 0's
task found free (`meeting_point`). srun ends every task of a job when one fails
(--kill-on-bad-exit), so a dead or hung rank cannot hold the allocation.

Before anything is submitted, `cluster_problems` checks the cluster: sbatch on PATH, the
partition there, every stage kind's nodes, GPUs, CPUs, memory and time within it. Every problem
in one list, nothing submitted. docs/cluster.md.
"""

import collections
import getpass
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

from ssl2det.placement import node_name, placement
from ssl2det.errors import PREEMPTED, UserError
from ssl2det.io import atomic_write
from ssl2det.process import start_logged

from typing import Annotated, Union

from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr

from ..record import StageRecord
from ..run_file import STAGE_KINDS, Entry, walltime_minutes
from ..starts import LAUNCHER, RANKS
from .base import Executor, Phase, RunState, SchedulerError

#: squeue's states of a job that waits to run, of one that runs or holds its nodes (STOPPED:
#: its processes stopped, its nodes kept), and of one that has ended; any other state (a newer
#: SLURM's) is unknown, and nothing is decided from it
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED",
          "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"}
#: ended states in which the stage's task cannot have finished its own way: the job's failure,
#: not the stage's (its task never ran, or was killed for memory)
FAILED_AROUND_THE_TASK = {"FAILED", "BOOT_FAIL", "OUT_OF_MEMORY"}
JOB_PREFIX = "ssl2det-"  # every job's name: ssl2det-KIND
SLURM_FOLDER = "slurm"  # OUTPUT_DIR/slurm/JOBID/: submitit's files of each job
#: the flag train_net reads its machines from the environment with (one task per node)
MACHINES_FROM_ENV = "--machines-from-env"
#: seconds a task waits for rank 0's task to name the job's meeting port
MEETING_WAIT_S = 300


#: sbatch options the launch block sets and the pre-flight checks: {option: the key to use}
SET_BY_LAUNCH = {
    "partition": "launch.slurm.partition", "p": "launch.slurm.partition",
    "account": "launch.slurm.account", "A": "launch.slurm.account", "qos": "launch.slurm.qos",
    "q": "launch.slurm.qos", "time": "launch.KIND.time", "t": "launch.KIND.time",
    "nodes": "launch.KIND.nodes", "N": "launch.KIND.nodes", "gpus": "launch.KIND.gpus_per_node",
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
    "signal": "launch.slurm.signal_delay_s"}


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


class SlurmSettings(Entry):
    """`launch.slurm`: where the jobs go and what else their scripts say."""

    partition: StrictStr = ""  # "" : the cluster's default partition
    account: StrictStr = ""
    qos: StrictStr = ""
    setup: list[StrictStr] = []  # shell lines run before each job (module load, activate)
    # further sbatch options, e.g. {constraint: a100, exclusive: true}; true: a flag
    sbatch: Annotated[dict[StrictStr, Union[StrictStr, StrictInt, StrictBool]],
                      AfterValidator(_sbatch_options)] = {}
    signal_delay_s: Annotated[StrictInt, Field(ge=10, le=3600)] = 120  # warning before the limit
    max_requeues: Annotated[StrictInt, Field(ge=0, le=100)] = 3  # after time limits, per job


class ClusterError(UserError):
    """The cluster cannot take the run as its launch: block asks; bad input, exit 2."""

    exit_code = 2


def _run(argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout


#: what squeue says of one job
JobState = collections.namedtuple("JobState", "state name user reason")


def job_states(job_ids) -> dict:
    """{job id: JobState} of the jobs SLURM still knows (queued,
    running, or ended within MinJobAge); a job it has forgotten is absent. A SchedulerError when
    squeue does not answer: its silence must not read as "no jobs"."""
    ids = sorted({str(j) for j in job_ids if j}, key=lambda j: int(re.sub(r"\D", "", j) or 0))
    if not ids:
        return {}
    what = f"cannot ask SLURM for the state of job(s) {','.join(ids[:5])}" + (
        "..." if len(ids) > 5 else "")
    if not shutil.which("squeue"):
        raise SchedulerError(f"{what}: squeue is not on PATH (run on a machine of the cluster)")
    try:
        out = _run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i|%T|%j|%u|%r"])
    except subprocess.CalledProcessError as e:
        if "Invalid job id" in (e.stderr or ""):  # every id already forgotten
            return {}
        raise SchedulerError(f"{what}: {(e.stderr or e.stdout or '').strip()[:300]}") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{what}: squeue did not answer within 60 s") from None
    states = {}
    for line in out.splitlines():
        job, state, name, user, reason = (line.strip().split("|") + ["", "", "", ""])[:5]
        states[job.split("_")[0]] = JobState(state, name, user, reason)
    return states


def _ours(name: str, user: str, kind: str = "") -> bool:
    """A job this project submitted as this user (for a stage of `kind`, where given): job ids
    are recycled and a record can be copied, so an id alone is nobody's warrant."""
    return name == f"{JOB_PREFIX}{kind}" if kind else name.startswith(JOB_PREFIX) and \
        user == getpass.getuser()


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


def tasks_per_node(starts: str, resources) -> int:
    """Tasks per node: one per rank (one per GPU, or as asked), else one (a launcher starts a
    process per GPU itself, or the stage is one process)."""
    if starts == RANKS:
        return resources.tasks_per_node or max(1, resources.gpus_per_node)
    return 1


def cluster_problems(launch, starts: dict) -> list:
    """What keeps the cluster from taking the stage kinds of `starts` ({kind: how its processes
    start}) as `launch` asks; one line per problem, none when it can."""
    settings = launch.settings(SlurmExecutor.name)
    missing = [tool for tool in ("sbatch", "squeue", "sinfo", "scontrol") if not shutil.which(tool)]
    if missing:
        return [f"launch: executor slurm, but {', '.join(missing)} not on PATH: run the pipeline "
                "on a machine of the cluster (a login node), or start the test cluster "
                "(bash tools/slurm/local_cluster.sh start)"]
    try:
        partitions = _partitions()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as e:
        return [f"launch: sinfo does not answer ({str(e).strip()[:200]}): is slurmctld up?"]
    name = settings.partition or next((p for p, v in partitions.items() if v["default"]), "")
    if name not in partitions:
        return [f"launch.slurm.partition: {settings.partition or '(the default)'} does not "
                "exist here "
                f"(sinfo: {', '.join(partitions) or 'no partition'})"]
    part, problems = partitions[name], []
    for kind in [k for k in STAGE_KINDS if k in starts]:
        r = launch.resources(kind)
        tasks = tasks_per_node(starts[kind], r)
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


def socket_setup(interface: str) -> list:
    """The job script's lines that force the process groups' interface (none: each rank picks
    the one that routes to the first node)."""
    return [f"export GLOO_SOCKET_IFNAME={interface} NCCL_SOCKET_IFNAME={interface}"] if interface \
        else []


def meeting_point(where, restart: str, folder=None) -> dict:
    """MASTER_ADDR and MASTER_PORT for the ranks of a job of several tasks: the first node
    (where rank 0 runs) and a port free there, which rank 0's task chooses and writes to the
    job's folder (`meeting.RESTART`: a requeued job chooses again), and every other task reads
    (every node sees that folder). The port ssl2det.placement derives from the job id, for a
    user's own srun, is the same for two jobs 20,000 ids apart on a shared node, and may be
    another program's. {} for one task, where the job's setup exported MASTER_ADDR (the user's
    choice stands), or outside a job's step (ssl2det.distributed says so). `folder`: the job's
    (default: submitit's, of the running job)."""
    if where.world_size == 1 or os.environ.get("MASTER_ADDR") or not where.master_addr:
        return {}
    if folder is None:
        from submitit import JobEnvironment

        folder = JobEnvironment().paths.folder
    path = Path(folder) / f"meeting.{restart}"
    if where.rank == 0:
        with socket.socket() as s:  # a port nothing on this node holds now
            s.bind(("", 0))
            port = s.getsockname()[1]
        atomic_write(str(path), lambda f: f.write(f"{port}\n".encode()))
    else:
        deadline = time.monotonic() + MEETING_WAIT_S
        while not path.is_file():
            if time.monotonic() > deadline:
                raise UserError(f"rank {where.rank} on {node_name()}: rank 0's task did not "
                                f"write the job's meeting port to {path} within "
                                f"{MEETING_WAIT_S} s (rank 0's log says why)")
            time.sleep(0.2)
        port = int(path.read_text())
    return {"MASTER_ADDR": where.master_addr, "MASTER_PORT": str(port)}


class StageJob:
    """What each task of a stage's SLURM job runs: the stage's command, its output written to
    the stage's log by the command itself (rank 0; rank k to LOG.rankK). On submitit's warning
    signal (time limit near, or `scancel --signal=USR2`) the stage, signalled too, writes its
    checkpoint and stops; `checkpoint` waits for that, and submitit requeues the job, which
    then resumes; the other ranks' tasks, whose stages stopped with ssl2det's PREEMPTED code,
    end without a failure and leave the requeue to rank 0. A task that fails records its rank,
    host, log and exit code (the first to fail: srun then ends the others); on success rank 0
    adds the wall time to the record."""

    def __init__(self, command, log, record, label):
        self.command, self.log, self.record = [str(c) for c in command], str(log), str(record)
        self.label = label
        self._proc = None

    def __getstate__(self):  # the running child is not part of a (re)submission
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state):
        self.__dict__.update(state, _proc=None)

    def __call__(self):
        where = placement()
        rank, ranks = where.rank, where.world_size
        log = self.log if rank == 0 else f"{self.log}.rank{rank}"
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        meeting = meeting_point(where, os.environ.get("SLURM_RESTART_COUNT", "0"))
        started = time.time()
        self._proc = start_logged(self.command, log, env={**os.environ, **meeting})
        code = self._proc.wait()
        record = StageRecord(self.record)
        if code == PREEMPTED and rank:
            # Stopped by the warning signal with its checkpoint written, as every rank is (they
            # agree on the step): not a failure. Rank 0's task, signalled too, requeues the job;
            # this task ends quietly so that srun's --kill-on-bad-exit does not end rank 0's
            # before it has.
            return code
        if code:
            if "exit" not in record.read():  # the first failure is the cause
                record.update(exit=code, failed={"rank": rank, "ranks": ranks, "log": log,
                                                 "host": node_name()})
            raise RuntimeError(f"stage {self.label} failed (exit {code}) in rank {rank}; "
                               f"its log: {log}")
        if rank == 0:
            record.update(seconds=round(time.time() - started, 1), started=started,
                          finished=time.time())
        return code

    def checkpoint(self, *args, **kwargs):
        """Called by submitit in its signal handler, while __call__ waits for the child."""
        from submitit.helpers import DelayedSubmission

        if self._proc is not None:
            # (not Popen.wait: the interrupted wait in __call__ holds its lock)
            while os.waitpid(self._proc.pid, os.WNOHANG) == (0, 0):
                time.sleep(0.1)  # its checkpoint is written when it exits
        return DelayedSubmission(self)


class SlurmExecutor(Executor):
    """Every stage a SLURM job through submitit (the module docstring)."""

    name, settings_model = "slurm", SlurmSettings

    def problems(self, stages) -> list:
        return cluster_problems(self.launch, {s.kind: s.starts for s in stages})

    def live_runs(self, stages) -> dict:
        jobs = {stage.key: str(stage.record.run["id"]) for stage in stages}
        states = job_states(jobs.values())
        found = {}
        for stage in stages:
            job = jobs[stage.key]
            if job not in states:
                continue  # forgotten by SLURM: how it ended is in the stage's record
            state, name, user, reason = states[job]
            where = f"job {job}"
            if not (_ours(name, user, stage.kind) and user == getpass.getuser()):
                # the id is another job's now (ids wrap), or the record came from elsewhere
                found[stage.key] = RunState(Phase.FAILED, where, f"SLURM's job {job} is "
                                            f"{name!r} of {user}, not this stage's: its own run "
                                            "is gone", run_id=job, by=self.name)
            elif state in QUEUED or state in RUNNING:
                found[stage.key] = RunState(Phase.QUEUED if state in QUEUED else Phase.RUNNING,
                                            where, cancel=f"scancel {job}", run_id=job,
                                            by=self.name)
            elif state in FAILED_AROUND_THE_TASK and "exit" not in stage.record.read():
                files = self.root / SLURM_FOLDER / job
                found[stage.key] = RunState(
                    Phase.FAILED, where, f"the job {state.lower()} before its task ended (its "
                    f"task never ran, or was killed: a bad setup: line, a missing module, "
                    f"memory); SLURM's own log: {files}/{job}_0_log.err", run_id=job,
                    by=self.name, settled=True)
            elif state == "CANCELLED" and reason == "DependencyNeverSatisfied":
                found[stage.key] = RunState(Phase.FAILED, where, "not run: a stage it reads did "
                                            "not complete (SLURM cancelled the job waiting for "
                                            "it)", run_id=job, by=self.name, settled=True)
            elif state in ENDED:
                found[stage.key] = RunState(Phase.FAILED, where, state.lower(), run_id=job,
                                            by=self.name)
            else:
                found[stage.key] = RunState(
                    Phase.UNKNOWN, where, f"SLURM says {state}, a state this version does not "
                    f"know; nothing is decided from it (scontrol show job {job})", run_id=job,
                    by=self.name, settled=True)
        return found

    def cancel(self, run_ids) -> None:
        """Cancel the runs that are this project's jobs of this user (a record's id alone is
        no warrant: ids wrap, records are copied); the others are named and left alone."""
        if not run_ids:
            return
        states = job_states(run_ids)
        mine = [job for job in run_ids
                if str(job) in states and _ours(states[str(job)].name, states[str(job)].user)]
        for job in run_ids:
            if str(job) in states and job not in mine:
                known = states[str(job)]
                print(f"[pipeline] job {job} is {known.name!r} of {known.user}, not this "
                      "pipeline's: left alone", flush=True)
        if mine:
            subprocess.run(["scancel", *mine], capture_output=True)

    def command(self, stage) -> list:
        """The command of one task of the stage's job."""
        r = self.launch.resources(stage.kind)
        if stage.starts == LAUNCHER:
            return stage.command(r.gpus_per_node, [MACHINES_FROM_ENV] if r.nodes > 1 else [])
        return stage.command(1)

    def _executor(self, stage, dependencies):
        import submitit

        r = self.launch.resources(stage.kind)
        executor = submitit.SlurmExecutor(folder=str(self.root / SLURM_FOLDER / "%j"),
                                          max_num_timeout=self.settings.max_requeues)
        extra = {**self.settings.sbatch}
        if dependencies:
            extra.update({"dependency": "afterok:" + ":".join(dependencies),
                          "kill-on-invalid-dep": "yes"})
        if self.settings.account:
            extra["account"] = self.settings.account
        if r.mem_gb:
            extra["mem"] = f"{max(1, round(r.mem_gb * 1024))}M"
        executor.update_parameters(
            job_name=f"{JOB_PREFIX}{stage.kind}", nodes=r.nodes,
            ntasks_per_node=tasks_per_node(stage.starts, r), cpus_per_task=r.cpus_per_task,
            time=walltime_minutes(r.time), signal_delay_s=self.settings.signal_delay_s,
            setup=[*self.settings.setup, *socket_setup(self.launch.socket_ifname)],
            additional_parameters=extra,
            srun_args=["--kill-on-bad-exit=1"],
            **({"gpus_per_node": r.gpus_per_node} if r.gpus_per_node else {}),
            **({"partition": self.settings.partition} if self.settings.partition else {}),
            **({"qos": self.settings.qos} if self.settings.qos else {}))
        return executor

    def start(self, stage, after, fingerprint, prefix=""):
        command = [str(c) for c in self.command(stage)]
        stage.folder.mkdir(parents=True, exist_ok=True)
        job = str(self._executor(stage, after).submit(
            StageJob(command, stage.log_path, stage.record.path, stage.label)).job_id)
        stage.record.write(hash=fingerprint, command=command, config=stage.effective_config(),
                           run={"executor": self.name, "id": job})
        print(f"{prefix}: SLURM job {job}" + (f" after {', '.join(after)}" if after else ""),
              flush=True)
        return job

    def describe(self, stage, after) -> str:
        """The sbatch script submitit would write (its job ids for the dependencies)."""
        executor = self._executor(stage, after)
        # submitit's own text of the script (a private method: tests/test_slurm.py's dry-run
        # test fails if a submitit release changes it)
        script = executor._make_submission_file_text(executor._submitit_command_str, "dry-run")
        return (f"  command of each task: {shlex.join(map(str, self.command(stage)))}\n"
                f"  log: {stage.log_path}\n" + "".join(f"  | {line}\n" for line in
                                                        script.splitlines()))

    def report_started(self, started, live, seconds, report):
        print(f"[pipeline] submitted {len(started)} SLURM job(s) in {seconds:.1f} s"
              + (f", {len(live)} already queued or running" if live else "") + "; follow them "
              f"with --status or --wait; the report: {report}", flush=True)
