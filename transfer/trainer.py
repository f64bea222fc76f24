"""Stage two's trainer: detectron2's DefaultTrainer with the evaluator each data set needs, the
semantic-segmentation mapper, the bad-image policy in the training loader, and the project's
checkpointer, all through DefaultTrainer's public extension points."""

import os

from detectron2.data import (DatasetFromList, DatasetMapper, MetadataCatalog,
                             build_detection_test_loader, build_detection_train_loader)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, SemSegEvaluator

from ssl2det.detectron2_internals import quiet_training_exceptions, train_loader_arguments
from ssl2det.errors import ConfigError, UserError
from ssl2det.preemption import CheckpointOnSignal

from . import modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from .checkpoint import TransferCheckpointer
from .data import SemSegDatasetMapper, SkipUnreadableImages


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, UserError)


class Trainer(DefaultTrainer):
    """`eval_results` holds the results of the evaluation at the end of training ({} if the
    config has no DATASETS.TEST)."""

    def build_hooks(self):
        # DefaultTrainer made a plain DetectionCheckpointer just before calling this; the hooks
        # (PeriodicCheckpointer) and resume_or_load use ours instead.
        self.checkpointer = TransferCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                 **self.checkpointer.checkpointables)
        self.eval_results = {}
        return [hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)
                if isinstance(hook, hooks.EvalHook) else hook
                for hook in super().build_hooks()] + [CheckpointOnSignal(self.checkpointer)]

    def train(self):
        quiet_training_exceptions(_is_user_error)  # reported as one line by the entry point
        return super().train()

    def _evaluate(self):
        self.eval_results = self.test(self.cfg, self.model)
        return self.eval_results

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if kind == "coco":
            # the fast evaluator needs detectron2's compiled extension, which may be absent
            return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        raise ConfigError(f"no evaluator for data set {dataset_name} (evaluator_type {kind!r})")

    @classmethod
    def _mapper(cls, cfg, is_train):
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            return SemSegDatasetMapper(cfg, is_train)
        return None  # detectron2's default

    @classmethod
    def build_train_loader(cls, cfg):
        # detectron2's loader from the config, with our mapping step (bad-image policy)
        spec = train_loader_arguments(cfg, cls._mapper(cfg, True) or DatasetMapper(cfg, True))
        spec["dataset"] = SkipUnreadableImages(
            DatasetFromList(spec["dataset"], copy=False), spec.pop("mapper"),
            cfg.DATALOADER.BAD_IMAGES, cfg.OUTPUT_DIR)
        return build_detection_train_loader(**spec, mapper=None)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=cls._mapper(cfg, False))
