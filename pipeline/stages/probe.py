"""`probe`: kNN and linear-probe top-1 of a frozen encoder (`python -m pretrain.eval probe`)."""

import sys

from pretrain.config import PROBE_KEYS, load_config
from pretrain.eval.protocols import PROTOCOLS
from ssl2det.config import config_values, key_in

from ..layout import RANDOM
from ..starts import RANKS, SINGLE
from .base import Stage
from .pretrain import PretrainStage


class ProbeStage(Stage):
    """kNN and linear-probe top-1 of a pretraining stage's frozen encoder, or, with `random`, of
    a randomly initialised encoder of that run's architecture (the baseline)."""

    kind = "probe"

    def __init__(self, spec, pretrain: PretrainStage, random: bool = False):
        self.name = RANDOM if random else pretrain.name
        super().__init__(spec.layout.probe(self.name), f"probe {self.name}", ("probe", self.name))
        self.spec, self.settings = spec, spec.probe
        self.result = spec.layout.probe_result(self.name)
        self.pretrain, self.run_spec = None if random else pretrain, pretrain.run_spec
        # the probe on augmented images splits its batches over the ranks, as pretraining
        # does; the probes on features computed once run in one process
        self.starts = RANKS if PROTOCOLS[self.settings.linear_protocol].on_images else SINGLE
        if random:
            self.encoder = ["--random-init", "--config-file", self.run_spec.config,
                            *self.run_spec.overrides]
        else:  # the run's own config.yaml, beside its checkpoint
            self.encoder = ["--checkpoint", spec.layout.pretrain_checkpoint(self.name)]

    def upstream_keys(self):
        return [("pretrain", self.name)] if self.pretrain else []

    def is_complete(self):
        return self.result.is_file()

    def command(self, processes=1, launcher_flags=()):
        s = self.settings
        probe = ["-m", "pretrain.eval", "probe", "--train-root", s.train_root, "--val-root",
                 s.val_root, "--epochs", s.linear_epochs, "--protocol", s.linear_protocol,
                 "--output", self.result, *self.encoder, *s.overrides]
        if processes > 1:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(processes), *probe]
        return [sys.executable, *probe]

    def inputs(self, upstream):
        s = self.settings
        config = (self.pretrain.config if self.pretrain else
                  load_config(self.run_spec.config, self.run_spec.overrides))
        return {"encoder": upstream[("pretrain", self.name)] if self.pretrain else RANDOM,
                "config": {k: v for k, v in config_values(config).items()
                           if key_in(k, PROBE_KEYS)},
                "probe": [s.train_root, s.val_root, s.linear_epochs, s.linear_protocol,
                          s.overrides]}

    @classmethod
    def build(cls, spec, earlier):
        if not spec.probe:
            return []
        pretrain = [p for p in earlier if isinstance(p, PretrainStage)]
        random = [cls(spec, pretrain[0], random=True)] if spec.probe.baseline and pretrain else []
        return [cls(spec, p) for p in pretrain] + random

    def problems(self, checks):
        s = self.settings
        return [checks.images_problem(f"probe {key}", root)
                for key, root in (("train_root", s.train_root), ("val_root", s.val_root))]

