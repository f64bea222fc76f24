"""What a run of the pipeline does with each stage, decided from the stages' records, the
hashes of their inputs now and the executor's states of their runs: skip it (complete and
current), leave it to its queued or running run, keep it though stale (`--keep-stale`), or run
it, first moving aside outputs made from other inputs. Then `carry_out` hands the stages that
run to the executor, each after the runs of the stages it reads."""

from dataclasses import dataclass, field

from .executors import Phase
from .spec import PipelineError


@dataclass
class Plan:
    steps: list = field(default_factory=list)  # [(prefix, stage, set_aside)] in stage order
    stale: list = field(default_factory=list)  # keys of stages kept though stale
    live: dict = field(default_factory=dict)  # {key: RunState} left to their runs
    replaced: list = field(default_factory=list)  # run ids to cancel: queued, now superseded


def make_plan(stages, hashes, states, executor, keep_stale=False) -> Plan:
    plan, changed, unknown = Plan(), set(), []
    for i, stage in enumerate(stages, 1):
        prefix = f"[pipeline {i}/{len(stages)}] {stage.label}"
        state, recorded = states[stage.key], stage.record.hash
        current = recorded == hashes[stage.key]
        follows = stage.reruns_with_upstream and any(key in changed for key in stage.requires)
        if state.live:
            if current and not follows and executor.can_follow(state):
                print(f"{prefix}: {state.describe()}, left to it", flush=True)
                plan.live[stage.key] = state
                continue
            if not (stage.replaceable_when_queued and state.phase is Phase.QUEUED):
                why = ("was made from other inputs than the run file's now" if not current else
                       "and two runs of one stage would write one folder")
                raise PipelineError(f"{prefix}: it is {state.describe()} {why}; cancel it "
                                    f"({state.cancel}) or let it end, then run again")
            plan.replaced.append(state.run_id)
        elif stage.is_complete() and current and not follows:
            print(f"{prefix}: complete, skipped", flush=True)
            continue
        elif state.phase is Phase.UNKNOWN:
            unknown.append(f"{stage.label}: {state.detail}")
            continue
        # Outputs without any record were made outside the pipeline (a pretraining run started
        # by hand, e.g. on several machines): the stage runs over them, and its own --resume
        # refuses them if their config differs.
        set_aside = stage.has_outputs() and not current and recorded is not None
        if not set_aside and stage.checkpoints_gone():
            # (its resume would refuse, and advise a new run the pipeline cannot start)
            print(f"{prefix}: its checkpoints are gone (model_final.pth and every "
                  "model_*.pth): it runs again from the start, its other outputs moved aside "
                  "first", flush=True)
            set_aside = True
        if set_aside and keep_stale and stage.is_complete() and not follows:
            print(f"{prefix}: STALE (its inputs changed since it ran), kept as asked", flush=True)
            plan.stale.append(stage.key)
            changed.add(stage.key)
            continue
        plan.steps.append((prefix, stage, set_aside))
        changed.add(stage.key)
    if unknown:
        raise PipelineError("the state of these stages' runs cannot be known, so nothing was "
                            "started or submitted (it could run them twice):\n" + "\n".join(
                                f"  - {line}" for line in unknown) + "\nRun again once the "
                            "scheduler answers.")
    return plan


def carry_out(plan: Plan, executor, hashes) -> dict:
    """Start every step of `plan` with the executor, each after the runs of the stages it reads
    (started now, or queued or running from before); returns {stage key: run id}."""
    executor.cancel(plan.replaced)
    runs = {}
    for prefix, stage, set_aside in plan.steps:
        if set_aside:
            moved = executor.set_aside(stage)
            if moved:
                print(f"{prefix}: its inputs changed since its outputs were made; moved them "
                      f"to {', '.join(map(str, moved))}", flush=True)
        after = [runs.get(key) or plan.live[key].run_id for key in stage.requires
                 if key in runs or key in plan.live]
        runs[stage.key] = executor.start(stage, after, hashes[stage.key], prefix)
    return runs


def status_line(stage, state, hashes) -> str:
    """One stage's state as --status prints it."""
    if state.phase is Phase.COMPLETE and stage.record.hash not in (None, hashes[stage.key]):
        return "STALE (complete, made from other inputs)"
    return state.describe()
