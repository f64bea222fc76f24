"""The pipeline on a real SLURM cluster (the one-node test cluster: tools/slurm/local_cluster.sh,
started by .ci/run) through submitit: every stage its own job with the stage graph's afterok
dependencies, independent stages at once, results equal to the local run's; a 2-task
pretraining job equal to torchrun's; a warning signal that checkpoints, requeues and resumes
exactly; re-submission that leaves live jobs alone and resubmits only what failed; bad launch
settings refused before anything is submitted."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from helpers import wait_until
from tiny_pipeline import (DATA, QUICK_PRETRAIN, final_metrics, run_pipeline, tiny_spec,
                           write_run_file)

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


def test_the_tiny_pipeline_as_slurm_jobs_survives_a_requeue_and_matches_the_local_run(
        tiny_local_run, tmp_path):
    """Each stage its own job (ids recorded), dependencies as the stage graph says. The
    pretraining gets SLURM's warning signal mid-run (submitit's USR2, sent with scancel): it
    writes a checkpoint and stops, the job is requeued under the same id, its dependents keep
    waiting, and it resumes from the checkpoint. A second submission meanwhile submits nothing
    and follows the jobs (--wait). The two fine-tuning seeds from one backbone run at once, the
    report is written by its job, and every final metric equals the uninterrupted local run's
    (same seeds), so the resume was exact and the fine-tunings ran after it."""
    from transfer.pipeline import build_stages
    from transfer.spec import load_spec

    local_out, _, _, local_metrics = tiny_local_run
    out = tmp_path / "run"
    run_file = write_run_file(tmp_path / "run.yaml",
                              tiny_spec(local_out.parent, out, launch=SLURM))
    assert "submitted 12 SLURM job(s)" in run_pipeline(run_file)
    folder = out / "pretrain/simclr"
    job = _record(folder / "stage.json")["run"]["id"]
    wait_until(lambda: (folder / "metrics.json").is_file()
                and len((folder / "metrics.json").read_text().splitlines()) >= 2,
                "the pretraining's second step")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    wait_until(lambda: _squeue("-j", job, "-o", "%T").strip() == "PENDING", "the requeue")
    # SLURM holds a requeued job for two minutes before it may start again; release it now
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
    followed = run_pipeline(run_file, "--wait")
    # (the other backbone's conversion needs no pretraining: it may be done by now)
    assert re.search(r"submitted 0 SLURM job\(s\) in [\d.]+ s, \d+ already queued or running",
                     followed), followed[-2000:]
    assert "[pipeline] finished in" in followed

    log = (folder / "pretrain.log").read_text()
    stopped = re.search(r"stopped by SIGUSR2 after iteration (\d+)", log)
    assert stopped and f"continuing at iteration {int(stopped.group(1)) + 1}" in log
    stages = build_stages(load_spec(str(run_file)))
    jobs = {stage.key: stage.record.run["id"] for stage in stages}
    assert len(set(jobs.values())) == len(stages) == 12 and jobs[("pretrain", "simclr")] == job
    for stage in stages:  # the report's: every other stage's job
        assert _dependencies(out, jobs[stage.key]) == {jobs[k] for k in stage.requires}, stage.label
    assert (out / "report.md").is_file() and "## Results" in (out / "report.md").read_text()

    seeds = [_record(out / f"finetune/det/{run}/stage.json") for run in ("simclr", "simclr-seed1")]
    assert seeds[0]["started"] < seeds[1]["finished"] and seeds[1]["started"] < seeds[0]["finished"]
    assert seeds[0]["started"] > _record(folder / "stage.json")["finished"] - 1

    assert final_metrics(out) == local_metrics

    again = run_pipeline(run_file, "--executor", "slurm")
    assert "submitted 0 SLURM job(s)" in again and again.count("complete, skipped") == 12
    status = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             "--status"], capture_output=True, text=True, cwd=REPO)
    assert status.returncode == 0 and status.stdout.count(": complete") == 12


def test_a_two_task_slurm_pretraining_equals_the_two_process_torchrun_run(tmp_path):
    """Two SLURM tasks (DDP from SLURM's environment, gloo) against torchrun's two processes
    of the same config: bit-identical weights; the scale each run says it ran at."""
    overrides = QUICK_PRETRAIN + ["SOLVER.MAX_ITER", "3", "INPUT.SIZE", "32",
                                  "MODEL.CHANNELS_LAST", "False", "KNN.ENABLED", "False"]
    # one thread a process, as torchrun sets it for its workers (OMP_NUM_THREADS=1)
    launch = {**SLURM, "setup": ["export OMP_NUM_THREADS=1"],
              "pretrain": {"tasks_per_node": 2, "cpus_per_task": 1, "time": "0:30:00"}}
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "slurm"), "launch": launch,
        "pretrain": [{"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
                      "overrides": overrides}]})
    run_pipeline(run_file, "--wait")
    torchrun = subprocess.run([sys.executable, "-m", "pretrain.launch",
                               str(REPO / "configs/demo/simclr_r50_small.yaml"), "--num-gpus",
                               "0", "--num-procs", "2", *overrides, "OUTPUT_DIR",
                               str(tmp_path / "torchrun")],
                              capture_output=True, text=True, timeout=900, cwd=REPO)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    ours = torch.load(tmp_path / "slurm/pretrain/a/model_final.pth", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "torchrun/model_final.pth", weights_only=True)["model"]
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    scale = _record(tmp_path / "slurm/pretrain/a/scale.json")
    assert scale["world_size"] == 2 and scale["batch_per_process"] == 4
    assert (tmp_path / "slurm/pretrain/a/pretrain.log.rank1").is_file()


def test_after_a_failed_job_status_names_it_and_resubmission_runs_only_it_and_its_dependents(
        tmp_path):
    """A stage that fails: --status names it with its log and last line, its dependent (the
    report) was cancelled; once fixed, a resubmission submits that stage and the report only."""
    broken = tmp_path / "broken" / "class"
    broken.mkdir(parents=True)
    for i in range(8):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg")
    quick = QUICK_PRETRAIN[2:] + ["SOLVER.MAX_ITER", "2", "INPUT.SIZE", "32",
                                  "MODEL.CHANNELS_LAST", "False", "KNN.ENABLED", "False"]
    run_file = write_run_file(tmp_path / "run.yaml", {
        "output_dir": str(tmp_path / "run"), "launch": SLURM, "pretrain": [
            {"name": "good", "config": "configs/demo/simclr_r50_small.yaml",
             "overrides": ["DATA.ROOT", str(DATA / "unlabeled"), *quick]},
            {"name": "bad", "config": "configs/demo/simclr_r50_small.yaml",
             "overrides": ["DATA.ROOT", str(tmp_path / "broken"), *quick]}]})
    assert "submitted 3 SLURM job(s)" in run_pipeline(run_file, "--wait", code=1)

    status = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             "--status"], capture_output=True, text=True, cwd=REPO)
    assert status.returncode == 1
    lines = dict(line.strip().split(": ", 1) for line in status.stdout.splitlines() if ": " in line)
    assert lines["pretrain good"] == "complete"
    log = tmp_path / "run/pretrain/bad/pretrain.log"
    assert lines["pretrain bad"].startswith("FAILED (") and f"log {log}: error: no image in" in \
        lines["pretrain bad"], lines["pretrain bad"]
    # the report's job was cancelled when its dependency failed (kill-on-invalid-dep)
    assert lines["report"].startswith("FAILED (job ") and "cancelled" in lines["report"], \
        lines["report"]

    shutil.rmtree(broken.parent)
    shutil.copytree(DATA / "unlabeled", broken.parent)
    again = run_pipeline(run_file, "--wait")
    assert "submitted 2 SLURM job(s)" in again and again.count("complete, skipped") == 1
    assert (tmp_path / "run/pretrain/bad/model_final.pth").is_file()
    assert (tmp_path / "run/report.md").is_file()


def test_bad_launch_settings_are_one_list_and_nothing_is_submitted(tmp_path):
    before = _squeue("-o", "%i")
    spec = {"output_dir": str(tmp_path / "run"), "pretrain": [
        {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
         "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]}
    cluster = write_run_file(tmp_path / "cluster.yaml", {**spec, "launch": {
        "executor": "slurm", "partition": "nosuch", "pretrain": {"cpus_per_task": 64}}})
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(cluster)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "launch.partition: nosuch does not exist here (sinfo: debug)" in result.stderr
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


def test_the_paper_scale_launch_block_fits_a_cluster_but_for_the_gpus_of_this_one():
    """configs/pipeline/infocl_imagenet_voc_coco.yaml's 2-node x 8-GPU launch: against the
    one-node test cluster the only problem is the GPUs (and the nodes that come with them)."""
    from transfer.executors.slurm import cluster_problems
    from transfer.run_file import STAGE_KINDS
    from transfer.spec import load_spec
    from transfer.stages import build_stages

    spec = load_spec(str(REPO / "configs/pipeline/infocl_imagenet_voc_coco.yaml"))
    assert spec.launch.executor == "slurm" and spec.launch.pretrain.nodes == 2
    assert spec.launch.pretrain.gpus_per_node == 8
    launch = spec.launch.model_copy(update={"partition": ""})  # the test cluster's default
    problems = cluster_problems(launch, {s.kind: s.starts for s in build_stages(spec)})
    gpu_kinds = [k for k in STAGE_KINDS if launch.resources(k).gpus_per_node]
    assert len(problems) == len(gpu_kinds) and all("(too few GPUs)" in p for p in problems), problems
