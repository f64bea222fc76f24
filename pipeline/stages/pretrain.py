"""`pretrain`: a pretraining run of a run file's entry (one per seed replicate), through our
launcher (`python -m pretrain.launch`'s command): one process per rank."""

import functools

from pretrain.config import RUNTIME_KEYS, load_config
from pretrain.launch import launch_command

from ..checks import CHECKPOINT_BYTES_PER_PARAMETER, PARAMETERS, checkpoints_kept
from ..spec import replicate_name
from ..starts import RANKS
from .base import Stage, final_checkpoint_done, results_values


class PretrainStage(Stage):
    kind, starts = "pretrain", RANKS

    def __init__(self, spec, run, replicate: int = 0):
        self.name = replicate_name(run.name, replicate)
        super().__init__(spec.layout.pretrain(self.name), f"pretrain {self.name}",
                         ("pretrain", self.name))
        self.run_spec, self.replicate = run, replicate

    def is_complete(self):
        return final_checkpoint_done(self.folder)

    @functools.cached_property
    def seed(self) -> int:
        """Replicate r runs with its config's SEED + r (the config is read once, not for every
        command line the stage writes)."""
        return load_config(self.run_spec.config, self.run_spec.overrides).SEED + self.replicate

    def opts(self):
        seed = ["SEED", str(self.seed)] if self.replicate else []
        return [*self.run_spec.overrides, *seed, "OUTPUT_DIR", str(self.folder)]

    def command(self, processes=1, launcher_flags=()):
        return launch_command(self.run_spec.config, processes, resume=True, opts=self.opts())

    @functools.cached_property
    def config(self):
        return load_config(self.run_spec.config, self.opts())

    def inputs(self, upstream):
        return {"config": results_values(self.config, RUNTIME_KEYS)}

    def effective_config(self):
        return self.config.dump()

    @classmethod
    def build(cls, spec, earlier):
        return [cls(spec, run, k) for run in spec.pretrain for k in range(run.repeats)]

    def problems(self, checks):
        from pretrain.data.build import file_index_dir  # (torchvision: not for the planner)

        cfg = self.config  # reads the config file with its overrides
        checks.archs[self.name] = cfg.MODEL.ARCH
        found = []
        if cfg.MODEL.CIFAR_STEM and any(self.run_spec.name in task.backbones
                                        for task in checks.spec.transfer):
            found.append(f"pretrain {self.run_spec.name} has MODEL.CIFAR_STEM True (a 3x3 stem "
                         "without max-pool), which detectron2's ResNet cannot take: its "
                         "conversion would fail after pretraining")
        for key, root in (("DATA.ROOT", cfg.DATA.ROOT), ("KNN.TRAIN_ROOT", cfg.KNN.TRAIN_ROOT),
                          ("DATA.VAL_ROOT", cfg.DATA.VAL_ROOT)):
            if root or key == "DATA.ROOT":
                found.append(checks.images_problem(key, root, file_index_dir(cfg)))
        return found

    def checkpoint_bytes(self, checks):
        if self.is_complete():
            return 0.0
        cfg, s = self.config, self.config.SOLVER
        iterations = s.EPOCHS * (checks.images.get(cfg.DATA.ROOT, 0) // s.BATCH_SIZE)
        if s.MAX_ITER > 0:
            iterations = min(iterations, s.MAX_ITER) if iterations else s.MAX_ITER
        return (PARAMETERS.get(cfg.MODEL.ARCH, PARAMETERS["resnet50"])
                * CHECKPOINT_BYTES_PER_PARAMETER
                * checkpoints_kept(iterations, s.CHECKPOINT_PERIOD, s.CHECKPOINTS_TO_KEEP))

