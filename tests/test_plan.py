"""The plan's decisions, with a fake executor and fake stages (no child process, no scheduler):
what is skipped, what runs and after which runs, what is set aside or kept stale, what is left
to a live run, replaced, refused, and what a run's state reads as. The end-to-end tests
(test_pipeline.py locally, test_slurm.py on the cluster) run each path once for real."""

import json
import sys

import pytest

from ssl2det.errors import PREEMPTED

from transfer.executors import Executor, Phase, RunState, SchedulerError
from transfer.executors.dry_run import DryRunExecutor
from transfer.executors.slurm import StageJob
from transfer.plan import carry_out, make_plan, status_line
from transfer.record import StageRecord
from transfer.spec import PipelineError
from transfer.stages import SINGLE


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

    def finish(self, fingerprint, run=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        self.output.write_text("made")
        self.record.write(hash=fingerprint, **({"run": run} if run else {}))


class FakeExecutor(Executor):
    """Runs nothing: `start` records the call; `live` says which runs are queued/running."""

    name, detached = "fake", True

    def __init__(self, launch=None, root=None, live=None, fail_query=False):
        self.launch, self.root = launch, root
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
    executor.detached = False
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
                                        "runs: timed out)")
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
    from transfer.spec import load_spec
    from transfer.stages import build_stages

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
