"""The pipeline's stages (base.py: the contract), one module per kind, and the graph they make
for a run file. A new kind is a module with a Stage subclass (its command, outputs, inputs,
problems and `build` from the run file) and its place in KINDS."""

from ..starts import LAUNCHER, RANKS, SINGLE
from .base import Stage, fingerprint
from .classify import ClassifyStage
from .convert import ConvertStage
from .probe import ProbeStage
from .pretrain import PretrainStage
from .report import ReportStage
from .train_net import EvaluateStage, FinetuneStage

#: the kinds in the order of the graph: each reads only stages of the kinds before it
KINDS = (PretrainStage, ConvertStage, ProbeStage, ClassifyStage, FinetuneStage, EvaluateStage,
         ReportStage)

__all__ = ["KINDS", "LAUNCHER", "RANKS", "SINGLE", "Stage", "build_stages", "fingerprints",
           "stale_stages"]


def build_stages(spec) -> list:
    """Every stage of the run, each after the stages it reads, the report last."""
    stages = []
    for kind in KINDS:
        stages += kind.build(spec, stages)
    keys = {stage.key for stage in stages}
    for stage in stages:
        stage.requires = [key for key in stage.upstream_keys() if key in keys]
    return stages


def fingerprints(stages) -> dict:
    """{stage key: hash of its inputs}, upstream hashes included: a change reaches every stage
    that depends on it."""
    hashes = {}
    for stage in stages:
        hashes[stage.key] = fingerprint(stage.inputs(hashes))
    return hashes


def stale_stages(stages, hashes) -> list:
    """Keys of the complete stages made from other inputs than the run file's now (a stage
    with no record was made outside the pipeline and is taken as it is)."""
    return [s.key for s in stages if s.key in hashes and s.is_complete()
            and s.record.hash not in (None, hashes[s.key])]
