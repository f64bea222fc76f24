"""Stage two's trainer: detectron2's DefaultTrainer with the evaluator each data set needs, the
semantic-segmentation mapper, the bad-image policy in the training loader, and the project's
checkpointer, all through DefaultTrainer's public extension points."""

import logging
import math
import os

from detectron2.data import (DatasetFromList, DatasetMapper, MetadataCatalog,
                             build_detection_test_loader, build_detection_train_loader)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, SemSegEvaluator
from detectron2.utils import comm

from ssl2det.checkpoint import KeepLastCheckpoints
from ssl2det.detectron2_internals import quiet_training_exceptions, train_loader_arguments
from ssl2det.errors import ConfigError, UserError
from ssl2det.io import atomic_write
from ssl2det.preemption import CheckpointOnSignal

from . import modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from .checkpoint import TransferCheckpointer
from .data import SemSegDatasetMapper, SkipUnreadableImages, StopAtUnusableImage

logger = logging.getLogger("transfer")


def protocol_difference(protocol, effective, world: int) -> str:
    """How a run on `world` processes differs from the protocol's REFERENCE_WORLD_SIZE."""
    reference, batch = protocol.SOLVER.REFERENCE_WORLD_SIZE, effective.SOLVER.IMS_PER_BATCH
    synced = world > 1 and effective.MODEL.RESNETS.NORM in ("SyncBN", "naiveSyncBN")
    return (f"this run differs from the protocol: {world} processes instead of "
            f"{reference}. detectron2 rescaled batch {protocol.SOLVER.IMS_PER_BATCH} -> {batch}, "
            f"lr {protocol.SOLVER.BASE_LR:g} -> {effective.SOLVER.BASE_LR:g}, iterations "
            f"{protocol.SOLVER.MAX_ITER} -> {effective.SOLVER.MAX_ITER} (all in "
            f"config_effective.yaml), {batch // world} images per process as in the protocol; "
            f"but batch norm sees {batch if synced else batch // world} images per step instead "
            f"of {protocol.SOLVER.IMS_PER_BATCH}, so results may differ from the published ones.")


def _is_user_error(error: BaseException) -> bool:
    return isinstance(error, UserError)


class Trainer(DefaultTrainer):
    """`eval_results` holds the results of the evaluation at the end of training ({} if the
    config has no DATASETS.TEST).

    With fewer processes than SOLVER.REFERENCE_WORLD_SIZE, detectron2 rescales batch, learning
    rate and schedule; this trainer also rescales precise BN's iterations (so that it sees as
    many images), writes the config actually run to OUTPUT_DIR/config_effective.yaml, and says
    in one warning how the run differs from the protocol."""

    def __init__(self, cfg):
        world, reference = comm.get_world_size(), cfg.SOLVER.REFERENCE_WORLD_SIZE
        if reference and reference != world:
            cfg = cfg.clone()
            cfg.defrost()
            cfg.TEST.PRECISE_BN.NUM_ITER = math.ceil(cfg.TEST.PRECISE_BN.NUM_ITER * reference / world)
            cfg.freeze()
        super().__init__(cfg)  # rescales with REFERENCE_WORLD_SIZE (DefaultTrainer.auto_scale_workers)
        if comm.is_main_process():
            text = self.cfg.dump()
            atomic_write(os.path.join(self.cfg.OUTPUT_DIR, "config_effective.yaml"),
                         lambda f: f.write(text.encode()))
            if reference and reference != world:
                logger.warning(protocol_difference(cfg, self.cfg, world))

    def build_hooks(self):
        # DefaultTrainer made a plain DetectionCheckpointer just before calling this; the hooks
        # (PeriodicCheckpointer) and resume_or_load use ours instead.
        self.checkpointer = TransferCheckpointer(self.checkpointer.model, self.cfg.OUTPUT_DIR,
                                                 **self.checkpointer.checkpointables)
        self.eval_results = {}
        return [hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)
                if isinstance(hook, hooks.EvalHook) else hook
                for hook in super().build_hooks()] + [
            KeepLastCheckpoints(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.CHECKPOINT_PERIOD,
                                self.cfg.SOLVER.CHECKPOINTS_TO_KEEP, comm.is_main_process()),
            CheckpointOnSignal(self.checkpointer)]

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
        mapper = cls._mapper(cfg, False) or DatasetMapper(cfg, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=StopAtUnusableImage(mapper))
