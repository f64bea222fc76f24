"""The plan's decisions, with a fake executor and fake stages (no child process, no scheduler):
what is skipped, what runs and after which runs, what is set aside or kept stale, what is left
to a live run, replaced, refused, and what a run's state reads as. The end-to-end tests
(test_pipeline.py locally, test_slurm.py on the cluster) run each path once for real."""

import json
import sys

import pytest

from ssl2det.errors import PREEMPTED

from pipeline.executors import Executor, Phase, RunState, SchedulerError
from pipeline.executors.dry_run import DryRunExecutor
from pipeline.executors.slurm import StageJob
from pipeline.plan import carry_out, make_plan, status_line
from pipeline.record import StageRecord
from pipeline.spec import PipelineError
from pipeline.stages import SINGLE


class FakeStage:
    """A stage whose outputs are one file; complete when it exists."""

    kind, starts = "fake", SINGLE
    reruns_with_upstream = replaceable_when_queued = False

    def __init__(self, root, name, requires=()):
        self.key, self.label, self.requires = ("fake", name), f"fake {name}", list(requires)
        self.folder = root / name
        self.output = self.folder / "done"
        self.record = StageRecord(self.folder / "stage.json")
        self.log_path = self.folder / "fake.log"

    def is_complete(self):
        return self.output.is_file()

    def has_outputs(self):
        return self.output.exists()

    def set_aside(self):
        target = self.output.with_name("done.stale")
        self.output.rename(target)
        return [target]

    def effective_config(self):
        return ""

    def checkpoints_gone(self):
        return self.folder.joinpath("last_checkpoint").is_file() and not self.output.exists()

    def finish(self, fingerprint, run=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.output.write_text("made")
        self.record.write(hash=fingerprint, **({"run": run} if run else {}))


class FakeExecutor(Executor):
    """Runs nothing: `start` records the call; `live` says which runs are queued/running."""

    name = "fake"

    def __init__(self, launch=None, root=None, live=None, fail_query=False):
        super().__init__(launch, root)
        self.live, self.fail_query, self.started, self.cancelled = live or {}, fail_query, [], []

    def live_runs(self, stages):
        if self.fail_query:
            raise SchedulerError("cannot ask fake for the state of runs: timed out")
        return {s.key: RunState(self.live[s.record.run["id"]], f"job {s.record.run['id']}",
                                cancel=f"fakecancel {s.record.run['id']}",
                                run_id=s.record.run["id"], by=self.name)
                for s in stages if s.record.run.get("id") in self.live}

    def start(self, stage, after, fingerprint, prefix=""):
        run_id = str(100 + len(self.started))
        self.started.append((stage.key[1], after))
        stage.record.write(hash=fingerprint, run={"executor": self.name, "id": run_id})
        return run_id

    def cancel(self, run_ids):
        self.cancelled += list(run_ids)

    def describe(self, stage, after):
        return f"  fake job of {stage.label} after {after}"


@pytest.fixture
def chain(tmp_path):
    """a -> b -> c, and d alone; the hashes of their inputs now."""
    a = FakeStage(tmp_path, "a")
    b = FakeStage(tmp_path, "b", [a.key])
    c = FakeStage(tmp_path, "c", [b.key])
    d = FakeStage(tmp_path, "d")
    return [a, b, c, d], {s.key: f"h{s.key[1]}" for s in (a, b, c, d)}


def _plan(stages, hashes, executor, keep_stale=False):
    plan = make_plan(stages, hashes, executor.states(stages), executor, keep_stale)
    return plan, carry_out(plan, executor, hashes)


def test_complete_current_stages_are_skipped_and_the_rest_run_after_what_they_read(chain):
    stages, hashes = chain
    a, b, c, d = stages
    a.finish(hashes[a.key])
    d.finish(hashes[d.key])
    executor = FakeExecutor()
    _, runs = _plan(stages, hashes, executor)
    assert executor.started == [("b", []), ("c", [runs[b.key]])]  # a is done: b waits for none
    assert b.record.hash == hashes[b.key] and b.record.run == {"executor": "fake", "id": "100"}


def test_a_stale_stage_is_set_aside_and_runs_or_is_kept_and_the_report_follows_it(chain):
    stages, hashes = chain
    a, b, c, d = stages
    for s in stages:
        s.finish(hashes[s.key])
    a.record.write(hash="made-from-other-inputs")
    report = FakeStage(a.folder.parent, "report", [s.key for s in stages])
    report.reruns_with_upstream = True
    report.finish("made-from-a-before")  # its hash follows a's: stale too, but never kept
    hashes[report.key] = "hreport"
    executor = FakeExecutor()
    plan, _ = _plan([*stages, report], hashes, executor, keep_stale=True)
    assert plan.stale == [a.key] and executor.started == [("report", [])]
    assert a.output.is_file()  # kept as it was
    executor = FakeExecutor()
    plan, _ = _plan([*stages, report], hashes, executor)
    assert [name for name, _ in executor.started] == ["a", "report"]
    assert (a.folder / "done.stale").is_file() and not a.output.exists()


def test_a_live_run_of_the_same_inputs_is_followed_and_its_dependents_wait_for_it(chain):
    stages, hashes = chain
    a, b, c, d = stages
    a.record.write(hash=hashes[a.key], run={"executor": "fake", "id": "7"})
    executor = FakeExecutor(live={"7": Phase.RUNNING})
    plan, runs = _plan(stages, hashes, executor)
    assert set(plan.live) == {a.key}
    assert executor.started == [("b", ["7"]), ("c", [runs[b.key]]), ("d", [])]


def test_a_live_run_of_other_inputs_is_refused_with_how_to_cancel_it_unless_replaceable(chain):
    stages, hashes = chain
    a = stages[0]
    a.record.write(hash="old", run={"executor": "fake", "id": "7"})
    executor = FakeExecutor(live={"7": Phase.QUEUED})
    with pytest.raises(PipelineError, match=r"queued \(job 7\) was made from other inputs.*"
                                            r"fakecancel 7"):
        _plan(stages, hashes, executor)
    assert executor.started == []
    a.replaceable_when_queued = True
    _plan(stages, hashes, executor)
    assert executor.cancelled == ["7"] and executor.started[0] == ("a", [])


def test_an_executor_that_cannot_wait_for_a_live_run_refuses_to_run_beside_it(chain):
    stages, hashes = chain
    stages[0].record.write(hash=hashes[stages[0].key], run={"executor": "fake", "id": "7"})
    executor = FakeExecutor(live={"7": Phase.RUNNING})
    executor.can_follow = lambda state: False  # (local: another process's run)
    with pytest.raises(PipelineError, match="two runs of one stage would write one folder"):
        _plan(stages, hashes, executor)


def test_after_a_failure_only_the_failed_stage_and_its_dependents_run_again(chain):
    stages, hashes = chain
    a, b, c, d = stages
    a.finish(hashes[a.key], run={"executor": "fake", "id": "1"})
    d.finish(hashes[d.key], run={"executor": "fake", "id": "4"})
    b.record.write(hash=hashes[b.key], run={"executor": "fake", "id": "2"}, exit=1)
    b.folder.mkdir(parents=True, exist_ok=True)
    b.log_path.write_text("step 1\nerror: no image in /data\n")
    executor = FakeExecutor(live={})
    states = executor.states(stages)
    assert states[b.key].phase is Phase.FAILED
    assert status_line(b, states[b.key], hashes) == (
        f"FAILED (fake run 2): exit 1, log {b.log_path}: error: no image in /data")
    assert states[c.key].phase is Phase.NOT_STARTED and states[a.key].phase is Phase.COMPLETE
    _plan(stages, hashes, executor)
    assert executor.started == [("b", []), ("c", ["100"])]


def test_a_scheduler_that_does_not_answer_stops_everything_and_reads_as_unknown(chain):
    stages, hashes = chain
    a, b = stages[:2]
    a.finish(hashes[a.key], run={"executor": "fake", "id": "1"})
    b.record.write(hash=hashes[b.key], run={"executor": "fake", "id": "2"})
    executor = FakeExecutor(fail_query=True)
    states = executor.states(stages)
    assert states[a.key].phase is Phase.COMPLETE  # its outputs say so, whatever the scheduler
    assert states[b.key].describe() == ("unknown (fake run 2: cannot ask fake for the state of "
                                        f"runs: timed out (its record: {b.record.path}))")
    with pytest.raises(PipelineError, match="nothing was started or submitted"):
        _plan(stages, hashes, executor)
    assert executor.started == [] and b.record.run["id"] == "2"  # the job id is kept


def test_the_rank_that_failed_first_is_named_with_its_host_and_log(chain):
    stages, hashes = chain
    b = stages[1]
    log = b.folder / "fake.log.rank1"
    b.folder.mkdir(parents=True)
    log.write_text("timed out waiting for rank 0\n")
    b.record.write(hash="x", run={"executor": "fake", "id": "2"}, exit=1,
                   failed={"rank": 1, "ranks": 2, "host": "node2", "log": str(log)})
    state = FakeExecutor().states([b])[b.key]
    assert state.describe() == (f"FAILED (fake run 2): exit 1, rank 1 on node2, log {log}: "
                                "timed out waiting for rank 0")


def test_a_run_stopped_by_a_preemption_signal_reads_as_interrupted_not_failed(chain):
    stages, hashes = chain
    b = stages[1]
    b.finish("x", run={"executor": "fake", "id": "2"})
    b.output.unlink()
    b.output.mkdir()  # outputs (a checkpoint), not complete
    b.log_path.write_text("error: stopped by SIGUSR2 after iteration 3; ... --resume.\n")
    b.record.update(exit=PREEMPTED)
    state = FakeExecutor().states([b])[b.key]
    assert state.phase is Phase.INTERRUPTED and "stopped by SIGUSR2" in state.detail


@pytest.mark.parametrize("code", [PREEMPTED, 3])
def test_a_slurm_task_of_rank_1_stopped_by_the_warning_leaves_the_requeue_to_rank_0(
        code, tmp_path, monkeypatch):
    """A preempted rank other than 0 must end its task quietly: a failure recorded, or a task
    exiting non-zero (srun's --kill-on-bad-exit then ends rank 0's), would cost the requeue."""
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    record = StageRecord(tmp_path / "stage.json")
    record.write(hash="h")
    job = StageJob([sys.executable, "-c", f"raise SystemExit({code})"], tmp_path / "stage.log",
                   record.path, "fake b")
    if code == PREEMPTED:
        assert job() == PREEMPTED and record.read() == {"hash": "h"}
    else:
        with pytest.raises(RuntimeError, match="failed .exit 3. in rank 1"):
            job()
        assert record.read()["exit"] == 3 and record.read()["failed"]["rank"] == 1
        assert record.read()["failed"]["log"] == f"{tmp_path / 'stage.log'}.rank1"


@pytest.mark.parametrize("damage", [b"\x00\xff\x13garbage", b'{"hash": "h', b'["a", "list"]'])
def test_a_damaged_record_is_named_and_its_stage_runs_again(chain, damage, capsys):
    stages, hashes = chain
    a = stages[0]
    a.finish(hashes[a.key])
    a.record.path.write_bytes(damage)
    executor = FakeExecutor()
    _plan(stages[:1], hashes, executor)
    assert f"damaged record {a.record.path}" in capsys.readouterr().err
    assert executor.started == [("a", [])] and (a.folder / "done.stale").is_file()
    assert json.loads(a.record.path.read_text())["hash"] == hashes[a.key]


def test_the_dry_run_says_what_would_run_and_changes_nothing(chain, capsys):
    stages, hashes = chain
    a, b = stages[:2]
    a.finish("old")
    inner = FakeExecutor()
    before = {p: p.read_bytes() for p in a.folder.iterdir()}
    _plan(stages, hashes, DryRunExecutor(inner))
    out = capsys.readouterr().out
    assert "fake job of fake a after []" in out and "fake job of fake b after ['<fake a>']" in out
    assert inner.started == [] and not b.folder.exists()
    assert {p: p.read_bytes() for p in a.folder.iterdir()} == before  # nothing set aside


def test_the_seeds_of_a_backbone_depend_on_its_conversion_not_on_each_other(tmp_path):
    """The tiny run's stage graph: both fine-tuning seeds of a backbone start once its weights
    are converted, side by side (as jobs, they run at once); each evaluation reads its own."""
    from tiny_pipeline import tiny_spec, write_run_file
    from pipeline.spec import load_spec
    from pipeline.stages import build_stages

    spec = tiny_spec(tmp_path, tmp_path / "run")
    stages = {s.key: s for s in build_stages(load_spec(str(write_run_file(
        tmp_path / "run.yaml", spec))))}
    seeds = [stages[("finetune", "det", run)] for run in ("simclr", "simclr-seed1")]
    assert seeds[0].requires == seeds[1].requires == [("convert", "simclr")]
    assert stages[("convert", "simclr")].requires == [("pretrain", "simclr")]
    for run in ("simclr", "simclr-seed1"):
        assert ("finetune", "det", run) in stages[("evaluate", "det", run)].requires
    report = next(s for s in stages.values() if s.kind == "report")
    assert set(report.requires) == set(stages) - {report.key}


class CommandStage(FakeStage):
    """A fake stage whose command is a real process: it makes its output, or exits with
    `code`."""

    def __init__(self, root, name, requires=(), code=0):
        super().__init__(root, name, requires)
        self.code = code

    def command(self, processes=1):
        make = f"import pathlib, sys; pathlib.Path({str(self.output)!r}).write_text('made')"
        return [sys.executable, "-c", make if self.code == 0 else f"import sys; sys.exit({self.code})"]


def test_the_local_executor_returns_from_start_and_runs_the_queue_when_followed(tmp_path):
    """As a scheduler: start records and queues, nothing runs; follow runs each in turn, a
    stage after a failed one is not run (afterok), an independent one still is; the states
    say so, one way for all."""
    from pipeline.executors import LocalExecutor
    from pipeline.run_file import Launch

    a = CommandStage(tmp_path, "a", code=3)
    b = CommandStage(tmp_path, "b", requires=[a.key])
    c = CommandStage(tmp_path, "c")
    executor = LocalExecutor(Launch(), tmp_path, echo=lambda line: None)
    run_a = executor.start(a, [], "h")
    executor.start(b, [run_a], "h")
    executor.start(c, [], "h")
    states = executor.states([a, b, c])
    assert [states[s.key].phase for s in (a, b, c)] == [Phase.QUEUED] * 3
    assert not any(s.output.exists() or s.log_path.exists() for s in (a, b, c))
    states = executor.follow([a, b, c])
    assert states[a.key].phase is Phase.FAILED and "exit 3" in states[a.key].detail
    assert states[b.key].phase is Phase.FAILED and not b.log_path.exists()
    assert states[b.key].detail == "not run: a stage it reads did not complete"
    assert states[c.key].phase is Phase.COMPLETE and c.record.read()["seconds"] >= 0


def test_follow_backs_off_while_nothing_changes(tmp_path, monkeypatch):
    """2 s, then half as long again after each look that saw no change, up to 60 s; a change
    brings it back to 2 s."""
    import pipeline.executors.base as base

    waits, phases = [], iter([Phase.RUNNING] * 12 + [Phase.QUEUED] + [Phase.RUNNING] * 2
                             + [Phase.COMPLETE])
    stage = FakeStage(tmp_path, "a")

    class Polled(FakeExecutor):
        def states(self, stages):
            return {stage.key: RunState(next(phases), "job 1")}

    monkeypatch.setattr(base.time, "sleep", waits.append)
    Polled().follow([stage])
    assert waits[:3] == [2.0, 3.0, 4.5] and max(waits) == 60.0
    assert waits[12:] == [2.0, 2.0, 3.0]  # the changes to queued and back to running, then none


def test_slurm_states_it_does_not_know_stay_unknown_and_only_its_own_jobs_are_cancelled(
        tmp_path, monkeypatch):
    """squeue and scancel stood in for by scripts: STOPPED is a live job (it holds its nodes); a
    state a newer SLURM adds is unknown and stops the plan; a recorded id that is now another
    user's job is not this stage's run, and cancelling it is refused; a job that failed before
    its task wrote anything is a failure naming SLURM's own log, not an interruption; one SLURM
    cancelled because the job it waited for failed was not run."""
    import getpass
    import os

    from pipeline.executors.slurm import SlurmExecutor
    from pipeline.run_file import Launch

    me = getpass.getuser()
    rows = {"11": f"STOPPED|ssl2det-fake|{me}", "12": f"FUTURE_STATE|ssl2det-fake|{me}",
            "13": "RUNNING|someones-notebook|alice", "14": f"FAILED|ssl2det-fake|{me}",
            "15": f"CANCELLED|ssl2det-fake|{me}|DependencyNeverSatisfied"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\n" + "".join(
        f"echo '{job}|{row}'\n" for job, row in rows.items()))
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'cancelled'}\n")
    for tool in ("squeue", "scancel"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    stages = [FakeStage(tmp_path, name) for name in "abcde"]
    for stage, job in zip(stages, rows):
        stage.record.write(hash="h", run={"executor": "slurm", "id": job})
        stage.folder.mkdir(parents=True, exist_ok=True)
        stage.output.write_text("partial")  # outputs to resume from
        stage.output.unlink()
    executor = SlurmExecutor(Launch(), tmp_path)
    states = executor.states(stages)
    assert [states[s.key].phase for s in stages] == [Phase.RUNNING, Phase.UNKNOWN, Phase.FAILED,
                                                     Phase.FAILED, Phase.FAILED]
    assert "SLURM says FUTURE_STATE" in states[stages[1].key].detail
    assert "'someones-notebook' of alice, not this stage's" in states[stages[2].key].detail
    assert "slurm/14/14_0_log.err" in states[stages[3].key].detail
    assert states[stages[4].key].detail.startswith("not run: a stage it reads did not complete")
    with pytest.raises(PipelineError, match="SLURM says FUTURE_STATE"):
        make_plan(stages[1:2], {stages[1].key: "h"}, {stages[1].key: states[stages[1].key]},
                  executor)
    executor.cancel(["11", "13"])
    assert (tmp_path / "cancelled").read_text().split() == ["11"]


def test_a_finished_stage_whose_checkpoints_were_deleted_runs_again_from_the_start(chain,
                                                                                  capsys):
    """Deleting a finished run's weights to reclaim disk is common: its resume found nothing and
    advised a new run, which the pipeline cannot start, so every run stopped there. Now it says
    what is gone and runs the stage again, its other outputs moved aside first."""
    stages, hashes = chain
    a = stages[0]
    a.finish(hashes[a.key])
    (a.folder / "last_checkpoint").write_text("done")
    (a.folder / "log.txt").write_text("the old run")
    a.output.unlink()  # (its model_final.pth, here)
    a.has_outputs = lambda: True
    executor = FakeExecutor()
    plan = make_plan(stages, hashes, executor.states(stages), executor)
    assert [(s.key[1], moved) for _, s, moved in plan.steps][0] == ("a", True)
    assert "its checkpoints are gone" in capsys.readouterr().out


def test_a_record_naming_an_executor_this_version_lacks_is_unknown_naming_the_record(chain):
    """(It stopped --status and every run with a traceback-free line that did not say which
    file held the name.)"""
    stages, hashes = chain
    stages[0].record.write(hash=hashes[stages[0].key], run={"executor": "kube", "id": "7"})
    state = FakeExecutor().states(stages)[stages[0].key]
    assert state.phase is Phase.UNKNOWN and "executor named 'kube'" in state.detail
    assert str(stages[0].record.path) in state.detail


def test_a_jobs_ranks_meet_at_a_port_rank_0_chose_free_on_its_node(tmp_path, monkeypatch):
    """The port of a job's process group: chosen free by rank 0's task on the first node and
    read by the others from the job's folder, a new one for each start of a requeued job (the
    port derived from the job id is the same for jobs 20,000 ids apart sharing a node). A
    MASTER_ADDR the job's setup exported stands; one task needs none."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.executors.slurm import meeting_point
    from ssl2det.placement import placement

    monkeypatch.delenv("MASTER_ADDR", raising=False)

    def task(rank, job="20001", tasks=2):
        return placement({"SLURM_PROCID": str(rank), "SLURM_NTASKS": str(tasks),
                          "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "mn[1-2]",
                          "SLURM_JOB_ID": job})

    assert task(0).master_port == task(0, job="1").master_port  # the collision avoided
    with ThreadPoolExecutor(1) as pool:
        rank_1 = pool.submit(meeting_point, task(1), "0", tmp_path)  # waits for rank 0's file
        chosen = meeting_point(task(0), "0", tmp_path)
        assert rank_1.result(timeout=300) == chosen
    assert chosen["MASTER_ADDR"] == "mn1" and (tmp_path / "meeting.0").is_file()
    with socket.socket() as s:  # free on this node
        s.bind(("", int(chosen["MASTER_PORT"])))
    again = meeting_point(task(0), "1", tmp_path)
    assert (tmp_path / "meeting.1").read_text() == f"{again['MASTER_PORT']}\n"
    assert meeting_point(task(0, tasks=1), "0", tmp_path / "none") == {}
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    assert meeting_point(task(1), "2", tmp_path / "none") == {}
