"""`classify`: a backbone's frozen encoder evaluated on a downstream classification set read in
its official layout (`python -m pretrain.eval linear --dataset ...`; pretrain/eval/downstream.py),
with the protocol's seeds over one extraction of the features. One stage per set and backbone
replicate; the run file's `classification:` entries ask for them."""

import sys

from pretrain.config import PROBE_KEYS
from ssl2det.config import config_values, key_in

from ..layout import RANDOM
from ..spec import replicate_name
from ..starts import SINGLE
from .base import Stage
from .pretrain import PretrainStage

RESULT = "classification.json"


def backbone_replicates(spec, entry) -> list:
    """(backbone, replicate name) of every backbone an entry evaluates: each replicate of the
    pretrain entries it names (default: all), and `random` where it names it."""
    names = entry.backbones if entry.backbones is not None else [r.name for r in spec.pretrain]
    return [(name, replicate_name(name, k)) for name in names if name != RANDOM
            for k in range(spec.pretrain_run(name).repeats)] + (
        [(RANDOM, RANDOM)] if RANDOM in names else [])


def result_path(spec, entry, run: str):
    return spec.layout.stage("classify", entry.name, run) / RESULT


class ClassifyStage(Stage):
    kind, starts = "classify", SINGLE

    def __init__(self, spec, entry, backbone: str, run: str, pretrain=None):
        super().__init__(spec.layout.stage("classify", entry.name, run),
                         f"classify {entry.name} from {run}", ("classify", entry.name, run))
        self.spec, self.entry, self.backbone, self.run = spec, entry, backbone, run
        self.pretrain = pretrain  # its PretrainStage; the first one's config for `random`
        self.result = result_path(spec, entry, run)

    @classmethod
    def build(cls, spec, earlier):
        stages = []
        pretrain = {p.name: p for p in earlier if isinstance(p, PretrainStage)}
        for entry in spec.entries.classification:
            for backbone, run in backbone_replicates(spec, entry):
                source = pretrain.get(run) or next(iter(pretrain.values()), None)
                if source is not None:  # (random needs a pretrain entry for its config)
                    stages.append(cls(spec, entry, backbone, run, source))
        return stages

    def upstream_keys(self):
        return [] if self.backbone == RANDOM else [("pretrain", self.run)]

    def is_complete(self):
        return self.result.is_file()

    def encoder_args(self) -> list:
        if self.backbone == RANDOM:
            return ["--random-init", "--config-file", self.pretrain.run_spec.config,
                    *self.pretrain.run_spec.overrides]
        return ["--checkpoint", self.spec.layout.pretrain_checkpoint(self.run)]

    def command(self, processes=1, launcher_flags=()):
        e = self.entry
        return [sys.executable, "-m", "pretrain.eval", "linear", "--dataset", e.dataset,
                "--data-root", e.root, "--protocol", e.protocol, "--classes", e.classes,
                "--size", e.size, "--repeats", e.repeats, "--output", self.result,
                *self.encoder_args()]

    def inputs(self, upstream):
        e = self.entry
        encoder = (upstream[("pretrain", self.run)] if self.backbone != RANDOM else
                   {k: v for k, v in config_values(self.pretrain.config).items()
                    if key_in(k, PROBE_KEYS)})
        return {"encoder": encoder, "entry": [e.dataset, e.root, e.protocol, e.size, e.classes,
                                              e.repeats]}

    def problems(self, checks):
        """The set's root in its layout, every split the protocol reads (files there, labels
        within the classes, the class count), once for all its backbones."""
        from pretrain.eval.sets import SETS
        from ssl2det.errors import DatasetError

        e = self.entry
        splits = ("train", "test") if e.protocol == "infocl" else ("train", "val", "trainval",
                                                                     "test")

        def check():
            if e.protocol == "infocl" and SETS[e.dataset].infocl_stats is None:
                return [f"classification {e.name}: {SETS[e.dataset].title} is not one of "
                        "InfoCL's transfer sets; use protocol: kornblith"]
            try:
                for split in splits:
                    SETS[e.dataset].samples(e.root, split, e.protocol, e.classes)
            except DatasetError as error:
                return [f"classification {e.name}: {error}"]
            return []
        return checks.once(("classify", e.name), check)
