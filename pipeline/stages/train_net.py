"""`finetune` and `evaluate`: a transfer task's detectron2 run from one backbone and seed
(`python -m transfer.train_net`): one launcher per machine, which starts a worker per GPU."""

import functools
import sys
from pathlib import Path

from transfer.config import RUNTIME_KEYS, merge_config

from ..checks import (CHECKPOINT_BYTES_PER_PARAMETER, PARAMETERS, arch_problem, checkpoints_kept,
                      metric_problems)
from ..spec import replicate_name
from ..starts import LAUNCHER
from .base import Stage, final_checkpoint_done, results_values


class TrainNetStage(Stage):
    """A `python -m transfer.train_net` run of a transfer task from one backbone, one seed."""

    starts = LAUNCHER

    def __init__(self, spec, task, backbone: str, replicate: int, folder: Path, label: str,
                 key: tuple):
        super().__init__(folder, label, key)
        self.spec, self.task, self.backbone, self.replicate = spec, task, backbone, replicate
        self.weights_from = spec.backbone_replicate(backbone, replicate)

    def command(self, processes=1, launcher_flags=()):
        # detectron2's flags before the KEY VALUE overrides, which end the command line
        return [sys.executable, "-m", "transfer.train_net", "--config-file", self.task.config,
                *self.flags(), "--num-gpus", max(1, processes), *launcher_flags,
                *self.spec.dataset_args, *self.task.overrides, "SEED", self.replicate,
                *self.extra_opts()]

    @classmethod
    def build(cls, spec, earlier):
        return [cls(spec, task, b, k) for task in spec.transfer for b in task.backbones
                for k in range(task.repeats)]

    def flags(self) -> list:
        raise NotImplementedError

    def extra_opts(self) -> list:
        raise NotImplementedError

    @functools.cached_property
    def config(self):
        return merge_config(self.task.config, [*self.task.overrides, "SEED", str(self.replicate),
                                               *map(str, self.extra_opts())])

    def config_inputs(self):
        """The results-deciding config, with MODEL.WEIGHTS left to the upstream record."""
        return {"config": results_values(self.config, (*RUNTIME_KEYS, "MODEL.WEIGHTS")),
                "datasets": self.spec.dataset_args}

    def effective_config(self):
        return self.config.dump()


def _weights(spec, backbone: str) -> str:
    """MODEL.WEIGHTS for a backbone replicate: "" (random), a detectron2 .pkl given as is, or
    the converted file."""
    external = spec.external.get(backbone)
    if external and external.is_detectron2:
        return external.weights
    return spec.layout.weights_for(backbone)


class FinetuneStage(TrainNetStage):
    kind = "finetune"

    def __init__(self, spec, task, backbone, replicate=0):
        run = replicate_name(backbone, replicate)
        super().__init__(spec, task, backbone, replicate, spec.layout.finetune(task.name, run),
                         f"fine-tune {task.name} from {run}", ("finetune", task.name, run))

    def is_complete(self):
        return final_checkpoint_done(self.folder)

    def upstream_keys(self):
        return [("convert", self.weights_from)]

    def extra_opts(self):
        # No evaluation here (DATASETS.TEST empty): the evaluate stage does it once.
        return ["MODEL.WEIGHTS", _weights(self.spec, self.weights_from),
                "DATASETS.TEST", "()", "OUTPUT_DIR", self.folder]

    def flags(self):
        return ["--resume"]

    def problems(self, checks):
        cfg = self.config
        found = checks.registration() + checks.datasets(tuple(cfg.DATASETS.TRAIN))
        external = self.spec.external.get(self.weights_from)
        if (not self.is_complete() and external and external.is_detectron2
                and self.weights_from not in checks.archs):
            found.append(checks.weights_arch(self.weights_from, external.weights))
        return found + [arch_problem(checks.archs.get(self.weights_from), cfg, self.weights_from)]

    def checkpoint_bytes(self, checks):
        if self.is_complete():
            return 0.0
        s = self.config.SOLVER
        return (PARAMETERS["detector"] * CHECKPOINT_BYTES_PER_PARAMETER
                * checkpoints_kept(s.MAX_ITER, s.CHECKPOINT_PERIOD, s.CHECKPOINTS_TO_KEEP))

    def inputs(self, upstream):
        return {**self.config_inputs(),
                "backbone": upstream.get(("convert", self.weights_from), self.weights_from)}


class EvaluateStage(TrainNetStage):
    kind = "evaluate"

    def __init__(self, spec, task, backbone, replicate=0):
        run = replicate_name(backbone, replicate)
        super().__init__(spec, task, backbone, replicate, spec.layout.evaluate(task.name, run),
                         f"evaluate {task.name} from {run}", ("evaluate", task.name, run))
        self.weights = spec.layout.finetune(task.name, run) / "model_final.pth"
        self.finetune_key = ("finetune", task.name, run)

    def is_complete(self):
        return (self.folder / "final_metrics.json").is_file()

    def upstream_keys(self):
        return [self.finetune_key]

    def extra_opts(self):
        return ["MODEL.WEIGHTS", self.weights, "OUTPUT_DIR", self.folder]

    def flags(self):
        return ["--eval-only", "--save-predictions", self.spec.predictions]

    def inputs(self, upstream):
        return {**self.config_inputs(), "predictions": self.spec.predictions,
                "finetune": upstream[self.finetune_key]}

    def problems(self, checks):
        cfg = self.config
        found = checks.registration() + checks.datasets(tuple(cfg.DATASETS.TEST))
        if self.task.name not in checks.metrics_checked and not found:
            checks.metrics_checked.add(self.task.name)  # (once a task: the same config)
            found += metric_problems(self.task, cfg)
        return found

