"""The pipeline on a real SLURM cluster (tools/slurm/local_cluster.sh start --nodes 2, started by
.ci/run: this machine as node `debug`, two more in network namespaces as partition `multi`)
through submitit: a 2-task pretraining job equal to torchrun's; bad launch settings refused
before anything is submitted; the dry run's sbatch scripts; a scheduler that does not answer;
time limits as SLURM reads them. Across the two nodes: srun equal to one machine, the interface
rule, and one study through the pipeline (the SLURM path's end-to-end run): every stage its own
job with the stage graph's afterok dependencies, a warning signal that checkpoints, requeues
and resumes, re-submission that leaves live jobs alone, a hung and a dead rank ending their job
in bounds, a lost node, and weights equal to one machine's. (Which stages a resubmission runs,
and which run side by side, is the plan's: tests/test_plan.py.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from helpers import wait_until
from tiny_pipeline import (DATA, QUICK_PRETRAIN, run_pipeline, tiny_spec,
                           with_overrides, write_run_file)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

ONE_CPU = {kind: {"cpus_per_task": 1, "time": "0:30:00"}
           for kind in ("pretrain", "convert", "probe", "finetune", "evaluate", "report")}
SLURM = {"executor": "slurm", **ONE_CPU}


def _squeue(*args) -> str:
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True,
                          check=True).stdout


def _record(path) -> dict:
    return json.loads(path.read_text())


def _dependencies(out, job) -> set:
    """The afterok job ids in the sbatch script submitit wrote for `job`."""
    script = (out / "slurm" / job / f"{job}_submission.sh").read_text()
    found = re.search(r"--dependency=afterok:([\d:]+)", script)
    return set(found.group(1).split(":")) if found else set()


def _start_two_local_processes(overrides, out) -> subprocess.Popen:
    """The pretraining of `overrides` as two gloo processes of our launcher (torchrun) on this
    machine, one thread each (as torchrun sets it), started (its output in OUT.log);
    _weights_of waits for it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{out}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-m", "pretrain.launch",
                                 str(REPO / "configs/demo/simclr_r50_small.yaml"), "--num-gpus",
                                 "0", "--num-procs", "2", *overrides, "OUTPUT_DIR", str(out)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def _weights_of(local: subprocess.Popen, out):
    """The model_final.pth of a run _start_two_local_processes started into `out`."""
    local.wait(timeout=900)
    assert local.returncode == 0, Path(f"{out}.log").read_text()[-3000:]
    return out / "model_final.pth"


def _two_local_processes(overrides, out):
    return _weights_of(_start_two_local_processes(overrides, out), out)


def _assert_same_weights(weights, reference):
    ours = torch.load(weights, weights_only=True)["model"]
    theirs = torch.load(reference, weights_only=True)["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


#: 3 iterations, no kNN: what the 2-task runs below train
THREE_STEPS = with_overrides(QUICK_PRETRAIN, "SOLVER.MAX_ITER", 3, "KNN.ENABLED", False)


@pytest.fixture(scope="module")
def torchrun_three_steps(tmp_path_factory):
    """THREE_STEPS as two processes on this machine, once for the tests that compare with it."""
    return _two_local_processes(THREE_STEPS, tmp_path_factory.mktemp("torchrun") / "run")


def test_a_two_task_slurm_pretraining_equals_the_two_process_torchrun_run(
        torchrun_three_steps, tmp_path):
    """Two SLURM tasks (DDP from SLURM's environment, gloo) against torchrun's two processes
    of the same config: bit-identical weights; the scale each run says it ran at."""
    overrides = THREE_STEPS
    # one thread a process, as torchrun sets it for its workers (OMP_NUM_THREADS=1)
    launch = {**SLURM, "slurm": {"setup": ["export OMP_NUM_THREADS=1"]},
              "pretrain": {"tasks_per_node": 2, "cpus_per_task": 1, "time": "0:30:00"}}
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "slurm"), "launch": launch,
        "pretrain": [{"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
                      "overrides": overrides}]})
    run_pipeline(run_file, "--wait")
    _assert_same_weights(tmp_path / "slurm/pretrain/a/model_final.pth", torchrun_three_steps)
    scale = _record(tmp_path / "slurm/pretrain/a/scale.json")
    assert scale["world_size"] == 2 and scale["batch_per_process"] == 4
    assert (tmp_path / "slurm/pretrain/a/pretrain.log.rank1").is_file()
    # they met at the port rank 0's task chose free and wrote to the job's folder
    job = _record(tmp_path / "slurm/pretrain/a/stage.json")["run"]["id"]
    port = (tmp_path / f"slurm/slurm/{job}/meeting.0").read_text().strip()
    assert re.search(rf"master \S+:{port} over", (tmp_path / "slurm/pretrain/a/pretrain.log")
                     .read_text())


def test_bad_launch_settings_are_one_list_and_nothing_is_submitted(tmp_path):
    before = _squeue("-o", "%i")
    spec = {"output_dir": str(tmp_path / "run"), "pretrain": [
        {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
         "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]}
    cluster = write_run_file(tmp_path / "cluster.yaml", {**spec, "launch": {
        "executor": "slurm", "slurm": {"partition": "nosuch"}, "pretrain": {"cpus_per_task": 64}}})
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(cluster)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "launch.slurm.partition: nosuch does not exist here (sinfo: debug, multi)" in \
        result.stderr
    cpus = write_run_file(tmp_path / "cpus.yaml", {**spec, "launch": {
        "executor": "slurm", "pretrain": {"cpus_per_task": 64, "mem_gb": 4096}}})
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(cpus), "--check"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "(too few CPUs, memory)" in result.stderr, result.stderr
    timed = write_run_file(tmp_path / "time.yaml", {**spec, "launch": {
        "executor": "slurm", "pretrain": {"time": "two days"}}})
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(timed)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "launch.pretrain.time: not a SLURM time limit" in result.stderr
    assert _squeue("-o", "%i") == before and not (tmp_path / "run").exists()


def test_the_dry_run_prints_each_job_with_its_sbatch_script_and_submits_nothing(tmp_path):
    """--dry-run under slurm: every job's command of each task and submitit's own sbatch script,
    its dependencies on the jobs it would submit named by stage; squeue unchanged, nothing
    written."""
    before = _squeue("-o", "%i")
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "run"), "launch": SLURM, "pretrain": [
            {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
             "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]})
    printed = run_pipeline(run_file, "--dry-run")
    assert printed.count(": would run, slurm:") == 2  # the pretraining and the report
    assert "| #SBATCH --job-name=ssl2det-pretrain" in printed
    assert "| #SBATCH --dependency='afterok:<pretrain a>'" in printed
    assert "| #SBATCH --kill-on-invalid-dep=yes" in printed and "--kill-on-bad-exit=1" in printed
    assert "dry run: 2 stage(s) would run" in printed
    assert _squeue("-o", "%i") == before and not (tmp_path / "run").exists()


def test_a_job_that_fails_before_its_task_is_a_failure_naming_slurms_own_log(tmp_path):
    """A bad `setup:` line ends the job's batch script before its task starts: the stage is
    FAILED (not "interrupted", the preemption state, which would quote nothing of this run),
    naming the job's own log under OUTPUT/slurm/JOBID/, which holds the line that failed; its
    dependent, which SLURM cancels, reads "not run"."""
    launch = {**SLURM, "slurm": {"setup": ["echo 'module: cuda/99.0 not found' >&2", "exit 3"]}}
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "run"), "launch": launch, "pretrain": [
            {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
             "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]})
    followed = run_pipeline(run_file, "--wait", code=1)
    job = _record(tmp_path / "run/pretrain/a/stage.json")["run"]["id"]
    log = tmp_path / f"run/slurm/{job}/{job}_0_log.err"
    statuses = _status(run_file)
    status = statuses["pretrain a"]
    assert status.startswith(f"FAILED (job {job}") and "before its task ended" in status, status
    assert "not run: a stage it reads did not complete" in statuses["report"], statuses
    assert str(log) in status and str(log) in followed, followed[-3000:]
    assert "module: cuda/99.0 not found" in log.read_text()
    assert not (tmp_path / "run/report.md").exists()


def test_the_paper_scale_launch_block_fits_a_cluster_but_for_the_gpus_of_this_one():
    """configs/pipeline/infocl_imagenet_voc_coco.yaml's 2-node x 8-GPU launch: against the
    one-node test cluster the only problem is the GPUs (and the nodes that come with them)."""
    from pipeline.executors.slurm import cluster_problems
    from pipeline.run_file import STAGE_KINDS
    from pipeline.spec import load_spec
    from pipeline.stages import build_stages

    spec = load_spec(str(REPO / "configs/pipeline/infocl_imagenet_voc_coco.yaml"))
    assert spec.launch.executor == "slurm" and spec.launch.pretrain.nodes == 2
    assert spec.launch.pretrain.gpus_per_node == 8
    launch = spec.launch.model_copy(update={"slurm": spec.launch.slurm.model_copy(
        update={"partition": ""})})  # the test cluster's default
    problems = cluster_problems(launch, {s.kind: s.starts for s in build_stages(spec)})
    gpu_kinds = [k for k in STAGE_KINDS if launch.resources(k).gpus_per_node]
    assert len(problems) == len(gpu_kinds) and all("(too few GPUs)" in p for p in problems), problems


# --- two nodes: mn1 and mn2, each a slurmd in its own network namespace (partition multi) ------

MULTI = {**SLURM, "slurm": {"partition": "multi", "setup": ["export OMP_NUM_THREADS=1"]},
         "pretrain": {"nodes": 2, "tasks_per_node": 1, "cpus_per_task": 1, "time": "0:30:00"},
         "finetune": {"nodes": 2, "cpus_per_task": 1, "time": "0:30:00"}}
#: 32 px, no kNN: a few tenths of a second an iteration on one CPU per node
QUICK_MULTI = with_overrides(QUICK_PRETRAIN, "KNN.ENABLED", False)


@pytest.fixture(scope="module")
def two_nodes(slurm_cluster):
    """The test cluster's partition `multi` with its two namespace nodes; skipped with the
    command that starts it where it is absent, a failure in CI."""
    nodes = subprocess.run(["sinfo", "-h", "-p", "multi", "-N", "-o", "%N"], capture_output=True,
                           text=True).stdout.split()
    if sorted(set(nodes)) != ["mn1", "mn2"]:
        message = ("no two-node partition `multi`: start the test cluster with `sudo bash "
                   "tools/slurm/local_cluster.sh start --nodes 2`")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _job_processes(job: str) -> list:
    """(pid, SLURM_PROCID, command line) of every process of SLURM job `job` on any node (the
    nodes share this machine's process table)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = dict(item.split(b"=", 1) for item in (proc / "environ").read_bytes()
                           .split(b"\0") if b"=" in item)
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if environ.get(b"SLURM_JOB_ID") == job.encode():
            found.append((int(proc.name), int(environ.get(b"SLURM_PROCID", b"-1")), cmdline))
    return found


def _training_rank(job: str, rank: int) -> int:
    """The pid of rank `rank`'s training process (not submitit's task around it)."""
    pids = [pid for pid, r, cmd in _job_processes(job) if r == rank and " -m pretrain " in cmd]
    assert len(pids) == 1, _job_processes(job)
    return pids[0]


def _last_iteration(folder) -> int:
    """The last iteration the pretraining in `folder` logged (-1 before the first)."""
    path = folder / "metrics.json"
    found = re.findall(r'"iteration": (\d+)', path.read_text()) if path.is_file() else []
    return max(map(int, found), default=-1)


def _past(folder, iteration: int, resumes: int):
    """A check: the pretraining in `folder` has logged `iteration`, and the run after its
    `resumes`-th resume has logged a step of its own (an earlier run's log may already be past
    `iteration`: a signal sent then would hit the new run while it starts)."""
    steps_at_resume = []

    def check() -> bool:
        log = folder / "pretrain.log"
        if not log.is_file() or log.read_text().count("resumed: continuing at") < resumes:
            return False
        steps = (folder / "metrics.json").read_text().count('"iteration"')
        if not steps_at_resume:
            steps_at_resume.append(steps)
        return steps > steps_at_resume[0] and _last_iteration(folder) >= iteration
    return check


def _lose_node(node: str) -> None:
    """What a node's loss looks like from the others: every process in its network namespace,
    its slurmd included, killed at once."""
    namespace = os.stat(f"/var/run/netns/{node}").st_ino
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.stat(proc / "ns/net").st_ino == namespace:
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _ended(job: str) -> bool:
    return _squeue("--states=all", "-j", job, "-o", "%T").strip() not in (
        "PENDING", "RUNNING", "COMPLETING", "CONFIGURING")


def _status(run_file) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             "--status"], capture_output=True, text=True, cwd=REPO)
    return dict(line.strip().split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def test_srun_across_two_nodes_picks_the_interface_that_routes_to_the_master(two_nodes,
                                                                           tmp_path):
    """`srun -N 2 --ntasks-per-node 1` of the process group's benchmark (docs/performance.md),
    no variable set by hand: each rank picks the interface that routes to the master (the host
    name resolves to loopback here, the gloo trap) and the all-reduce crosses the nodes. (The
    pretraining across them, its weights and scale.json: the two-node study below.)"""
    srun = subprocess.run(["srun", "-p", "multi", "-N", "2", "--ntasks-per-node", "1",
                           sys.executable, "-m", "benchmark", "allreduce", "--elements",
                           "1000", "--iters", "2", "--output", str(tmp_path / "allreduce.json")],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert srun.returncode == 0, srun.stderr[-3000:]
    for rank, node in ((0, "mn1"), (1, "mn2")):
        assert re.search(rf"\[distributed\] rank {rank} on {node}: master mn1:\d+ over eth0 "
                         rf"\(10\.88\.0\.1{rank + 1}\)", srun.stderr), srun.stderr[-3000:]
    measured = _record(tmp_path / "allreduce.json")
    assert measured["nodes"] == 2 and measured["world_size"] == 2 and measured["allreduce_s"] > 0


def test_torchrun_across_the_two_nodes_equals_two_processes_on_one_machine(
        two_nodes, torchrun_three_steps, tmp_path):
    """No scheduler: tools/pretrain.sh's launcher (torchrun --nnodes 2, one process a node) in
    mn1's and mn2's network namespaces. Rank, world and node come from torchrun's environment
    (ssl2det/placement.py), each rank picks the interface that routes to the master, and the
    weights equal two processes on one machine bit for bit."""
    out, procs = tmp_path / "run", []
    for node, rank in (("mn1", 0), ("mn2", 1)):
        log = open(tmp_path / f"{node}.log", "w")
        procs.append(subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{node}", sys.executable, "-m", "pretrain.launch",
             str(REPO / "configs/demo/simclr_r50_small.yaml"), "--num-gpus", "0",
             "--num-machines", "2", "--machine-rank", str(rank), "--dist-url",
             "tcp://10.88.0.11:45931", *THREE_STEPS, "OUTPUT_DIR", str(out)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env=dict(os.environ, OMP_NUM_THREADS="1", SLURMD_NODENAME=node)))
    for proc, node in zip(procs, ("mn1", "mn2")):
        proc.wait(timeout=600)
        assert proc.returncode == 0, (tmp_path / f"{node}.log").read_text()[-3000:]
    _assert_same_weights(out / "model_final.pth", torchrun_three_steps)
    scale = _record(out / "scale.json")
    assert scale["nodes"] == 2 and scale["world_size"] == 2
    assert [(r["host"], r["address"], r["interface"]) for r in scale["ranks"]] == [
        ("mn1", "10.88.0.11", "eth0"), ("mn2", "10.88.0.12", "eth0")]


def test_a_master_the_node_cannot_reach_is_one_line_within_seconds(two_nodes, tmp_path):
    """Rank 1 inside node mn2's namespace, told to meet at an address no route leads to (no
    packet leaves the namespace): one line naming the node and the master, exit 1, no hang."""
    result = subprocess.run(
        ["nsenter", "--net=/var/run/netns/mn2", sys.executable, "-m", "pretrain",
         "--config-file", str(REPO / "configs/demo/simclr_r50_small.yaml"), *QUICK_MULTI,
         "OUTPUT_DIR", str(tmp_path / "run")], capture_output=True, text=True, timeout=120,
        cwd=REPO, env=dict(os.environ, RANK="1", WORLD_SIZE="2", MASTER_ADDR="10.88.1.1",
                           MASTER_PORT="29911", SLURMD_NODENAME="mn2"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "mn2 cannot reach the master 10.88.1.1:29911 (Network is unreachable)" in result.stderr


def test_a_two_node_study_survives_a_requeue_a_hung_and_a_dead_rank_and_a_lost_node_exactly(
        two_nodes, tmp_path):
    """Pretraining and fine-tuning across the two nodes through the pipeline, each stage its
    own job with the stage graph's dependencies. SLURM's warning signal (submitit's USR2, sent
    with scancel, as before a time limit): both ranks checkpoint and stop, the job is requeued
    under its id, its dependents keep waiting, and a second submission meanwhile submits
    nothing. Then a rank on mn2 that hangs (SIGSTOP): rank 0 stops after DIST.TIMEOUT_S, srun ends the job
    (--kill-on-bad-exit) within DIST.TIMEOUT_S + 60 s, no process of it is left, --status
    names the failure. Submitted again, it resumes; a rank on mn2 that dies (SIGKILL) ends the
    job within 60 s, the same way. Submitted again, it resumes; node mn2 is lost (its slurmd
    and processes killed): the job stops running within 120 s (it fails, or SLURM requeues it
    for the node failure); with the node back, the run file submitted again runs to the report
    (the requeued job cancelled first). The pretrained weights equal an uninterrupted 2-process
    run on one machine (run while SLURM notices the lost node) and scale.json names each rank's
    node, address and interface; the 2-node fine-tuning equals its command run as 2 processes
    here; submitted again, every stage is complete and skipped."""
    from pipeline.cli import build_stages
    from pipeline.spec import load_spec

    timeout_s = 20
    overrides = with_overrides(QUICK_MULTI, "SOLVER.CHECKPOINT_PERIOD", 6, "DIST.TIMEOUT_S",
                               timeout_s)
    spec = tiny_spec(tmp_path, tmp_path / "run", launch=MULTI)
    spec.update(repeats=1, backbones=[], report={"predictions": 0})
    spec["pretrain"][0]["overrides"] = overrides
    spec["transfer"][0].update(backbones=["simclr"], baseline="simclr", reference=[])
    run_file = write_run_file(tmp_path / "run.yaml", spec)
    folder = tmp_path / "run/pretrain/simclr"

    def fault(signal_name, after_iteration, resumes, bound_s):
        job = _record(folder / "stage.json")["run"]["id"]
        wait_until(_past(folder, after_iteration, resumes), "the pretraining's progress")
        os.kill(_training_rank(job, 1), getattr(signal, signal_name))
        started = time.monotonic()
        wait_until(lambda: _ended(job), f"the job's end after {signal_name}", bound_s)
        wait_until(lambda: not _job_processes(job), "the job's processes to go", 30)
        status = _status(run_file)["pretrain simclr"]
        assert status.startswith("FAILED (job ") and " on mn" in status, status
        if signal_name == "SIGSTOP":
            # rank 0 gave up on its peer in one line (SLURM then wakes rank 1 to end it, so
            # either rank may be the failure on record)
            log = (folder / "pretrain.log").read_text()
            assert "error: rank 0 stopped at iteration" in log and "--resume" in log
            assert "Traceback" not in log
        return time.monotonic() - started

    assert "submitted 5 SLURM job(s)" in run_pipeline(run_file)
    stages = build_stages(load_spec(str(run_file)))
    jobs = {stage.key: stage.record.run["id"] for stage in stages}
    assert len(set(jobs.values())) == len(stages) == 5
    for stage in stages:  # the report's: every other stage's job
        assert _dependencies(tmp_path / "run", jobs[stage.key]) == {
            jobs[k] for k in stage.requires}, stage.label
    job = jobs[("pretrain", "simclr")]
    wait_until(lambda: _last_iteration(folder) >= 2, "the pretraining's third step")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: _squeue("-j", job, "-o", "%T").strip() == "PENDING", "the requeue")
    requeued = time.time()
    wait_until(lambda: not _job_processes(job), "the stopped run's processes to go", 60)
    assert "exit" not in _record(folder / "stage.json"), "the warning was recorded as a failure"
    # SLURM holds a requeued job for two minutes before it may start again; release it now, but
    # not within the second of the requeue: slurmd compares credentials by the second, and a
    # job started then is killed as "Job credential revoked" (seen in slurmctld.log under load)
    time.sleep(max(0.0, requeued + 2.5 - time.time()))
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
    second = run_pipeline(run_file)
    assert re.search(r"submitted 0 SLURM job\(s\) in [\d.]+ s, 5 already queued or running",
                     second), second[-3000:]
    hung = fault("SIGSTOP", 7, 1, timeout_s + 60)  # (checkpoints after iterations 6, 12, 18)
    assert "submitted 5 SLURM job(s)" in run_pipeline(run_file)
    dead = fault("SIGKILL", 13, 2, 60)
    assert "submitted 5 SLURM job(s)" in run_pipeline(run_file)
    job = _record(folder / "stage.json")["run"]["id"]
    wait_until(_past(folder, 19, 3), "the pretraining's progress")
    _lose_node("mn2")
    started = time.monotonic()
    # the reference for the weights, run while SLURM notices the loss (this machine is idle)
    reference = _start_two_local_processes(overrides, tmp_path / "local")
    wait_until(lambda: _squeue("--states=all", "-j", job, "-o", "%T").strip() not in (
        "RUNNING", "COMPLETING"), "the job to stop running after the node's loss", 120)
    lost = time.monotonic() - started
    after = _squeue("--states=all", "-j", job, "-o", "%T").strip()
    # SLURM requeues a job whose node failed (the same id); here, when the node came back, the
    # recovery also killed the requeued job's new rank there: cancel it and submit again
    subprocess.run(["scancel", job], check=True)
    wait_until(lambda: _ended(job), "the cancelled job's end", 120)
    subprocess.run(["bash", str(REPO / "tools/slurm/local_cluster.sh"), "start", "--nodes", "2"],
                   check=True, capture_output=True)  # the node is back
    followed = run_pipeline(run_file, "--wait")
    assert "[pipeline] finished in" in followed, followed[-2000:]
    log = (folder / "pretrain.log").read_text()
    stopped = re.search(r"stopped by SIGUSR2 after iteration (\d+)", log)
    assert stopped and f"continuing at iteration {int(stopped.group(1)) + 1}" in log, log[-3000:]
    assert log.count("continuing at iteration") == 4, log[-3000:]
    print(f"hung rank: job ended {hung:.0f} s after SIGSTOP; dead rank: {dead:.0f} s after "
          f"SIGKILL; lost node: job {after.lower()} {lost:.0f} s after the loss")

    _assert_same_weights(folder / "model_final.pth", _weights_of(reference, tmp_path / "local"))
    assert _record(folder / "scale.json")["ranks"] == [
        {"host": "mn1", "address": "10.88.0.11", "interface": "eth0"},
        {"host": "mn2", "address": "10.88.0.12", "interface": "eth0"}]

    finetune = tmp_path / "run/finetune/det/simclr"
    assert "[distributed] rank 1 on mn2" in (finetune / "finetune.log.rank1").read_text()
    command = _record(finetune / "stage.json")["command"]
    flag = command.index("--machines-from-env")
    assert command[-2] == "OUTPUT_DIR"
    here = [subprocess.Popen(  # the same command, as two processes on this machine
        [*command[:flag], "--num-machines", "2", "--machine-rank", str(rank), "--dist-url",
         "tcp://127.0.0.1:29913", *command[flag + 1:-1], str(tmp_path / "finetune_here")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1")) for rank in (0, 1)]
    assert [p.wait(timeout=600) for p in here] == [0, 0]
    ours = torch.load(finetune / "model_final.pth", weights_only=False)["model"]
    theirs = torch.load(tmp_path / "finetune_here/model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert "## Results" in (tmp_path / "run/report.md").read_text()
    again = run_pipeline(run_file)
    assert "submitted 0 SLURM job(s)" in again and again.count("complete, skipped") == 5
    assert list(_status(run_file).values()).count("complete") == 5


@pytest.mark.parametrize("limit", ["30", "30:15", "2:00:00", "1-02", "1-02:00", "1-02:03:04"])
def test_every_time_limit_form_means_to_us_what_it_means_to_slurm(limit):
    """A held job submitted with each form: SLURM's TimeLimit, in minutes, is ours."""
    from pipeline.run_file import walltime_minutes

    job = subprocess.run(["sbatch", "--parsable", "--hold", f"--time={limit}", "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        shown = re.search(r"TimeLimit=(\S+)", subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True).stdout).group(1)
    finally:
        subprocess.run(["scancel", job])
    days, _, clock = shown.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    assert (int(days or 0) * 24 + h) * 60 + m + (s > 0) == walltime_minutes(limit), shown


def test_a_scheduler_that_does_not_answer_stops_submission_and_reads_unknown(tmp_path):
    """squeue failing (a wrapper earlier on PATH, as a slurmctld that times out): nothing is
    submitted, the job id already recorded stays, and --status says unknown, not FAILED."""
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "run"), "launch": SLURM, "pretrain": [
            {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
             "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]})
    record = tmp_path / "run/pretrain/a/stage.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"hash": "x", "run": {"executor": "slurm", "id": "4242"}}))
    wrapper = tmp_path / "bin"
    wrapper.mkdir()
    (wrapper / "squeue").write_text("#!/bin/sh\necho 'squeue: error: Socket timed out on "
                                    "send/recv operation' >&2\nexit 1\n")
    (wrapper / "squeue").chmod(0o755)
    env = dict(os.environ, PATH=f"{wrapper}:{os.environ['PATH']}")
    before = _squeue("-o", "%i")
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file)],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "cannot ask SLURM for the state of job(s) 4242: squeue: error: Socket timed out" in \
        result.stderr and "nothing was started or submitted" in result.stderr
    assert _squeue("-o", "%i") == before and _record(record)["run"]["id"] == "4242"
    status = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             "--status"], capture_output=True, text=True, cwd=REPO, env=env)
    assert "pretrain a: unknown (slurm run 4242: cannot ask SLURM" in status.stdout, status.stdout
