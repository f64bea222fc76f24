"""Stage two's trainer: detectron2's DefaultTrainer with the evaluator each data set needs,
the semantic-segmentation mapper, CPU fallbacks, and a checkpoint report users can act on."""

import json
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import (DatasetFromList, DatasetMapper, MetadataCatalog,
                             build_detection_test_loader, build_detection_train_loader)
from detectron2.data.build import _train_loader_from_config
from detectron2.engine import DefaultTrainer, default_setup, hooks
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator, SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from pretrain.engine.checkpoint import (AtomicSaveMixin, atomic_write, check_weights_pickle,
                                        load_checkpoint_file)

from . import modeling  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from .data import SemSegDatasetMapper, SkipUnreadableImages

logger = logging.getLogger("transfer")

#: Config keys that name a normalisation layer.
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM", "MODEL.SEM_SEG_HEAD.NORM")


class TransferSetupError(ValueError):
    """A bad stage-two config or argument; the message names it and the fix."""


def _get(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(cfg, dotted, value):
    *parents, last = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def adapt_to_machine(cfg):
    """Make a paper-protocol config run where the user is: the CPU when no GPU is visible, and
    a SyncBN that works there (torch's SyncBatchNorm needs GPUs; detectron2's naiveSyncBN
    synchronises over any backend and is plain BN in one process). Returns what it changed."""
    changes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        changes.append("MODEL.DEVICE cuda -> cpu (no GPU visible)")
    if cfg.MODEL.DEVICE == "cpu":
        for key in NORM_KEYS:
            if _get(cfg, key) == "SyncBN":
                _set(cfg, key, "naiveSyncBN")
                changes.append(f"{key} SyncBN -> naiveSyncBN (CPU)")
    return changes


def setup(args):
    """Config from file + overrides, adapted to the machine, then detectron2's default_setup
    (output folder, logging, config.yaml, seed)."""
    cfg = get_cfg()
    # An unreadable training image: "skip" (warn, list in OUTPUT_DIR/bad_images.txt, map another
    # image) or "error". Ours; detectron2 itself stops with a traceback.
    cfg.DATALOADER.BAD_IMAGES = "skip"
    if not os.path.isfile(args.config_file):
        raise TransferSetupError(f"config file not found: {args.config_file}")
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError) as e:
        raise TransferSetupError(f"bad config ({args.config_file} + overrides): {e}") from None
    if cfg.DATALOADER.BAD_IMAGES not in ("skip", "error"):
        raise TransferSetupError(f"DATALOADER.BAD_IMAGES = {cfg.DATALOADER.BAD_IMAGES!r} is not "
                                 "one of skip, error")
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise TransferSetupError(f"MODEL.WEIGHTS {weights} does not exist. Convert a pretraining "
                                 "checkpoint with tools/convert_to_d2.py, or pass MODEL.WEIGHTS "
                                 "'' to start from random weights.")
    changes = adapt_to_machine(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="transfer")
    for change in changes:
        logger.warning(f"adapted to this machine: {change}")
    return cfg


class TransferCheckpointer(AtomicSaveMixin, DetectionCheckpointer):
    """Saves atomically; loads safely (.pth with weights_only=True, .pkl only if it holds nothing
    but arrays), and a damaged newest checkpoint makes --resume fall back to the previous one
    (AtomicSaveMixin). Says which missing parameters are expected (new heads) and which mean a
    broken conversion (backbone), instead of detectron2's undifferentiated warning."""

    def _load_file(self, filename):
        if not os.path.isfile(filename):  # URLs, detectron2:// and other schemes
            return super()._load_file(filename)
        if filename.endswith(".pkl"):
            check_weights_pickle(filename)  # before detectron2's plain pickle.load
            return super()._load_file(filename)
        loaded = load_checkpoint_file(filename)
        return loaded if "model" in loaded else {"model": loaded}

    def _log_incompatible_keys(self, incompatible):
        backbone = [k for k in incompatible.missing_keys
                    if k.startswith("backbone.") or (k.startswith("roi_heads.res5.")
                                                     and not k.startswith("roi_heads.res5.norm"))]
        heads = [k for k in incompatible.missing_keys if k not in backbone]
        if heads:
            groups = sorted({".".join(k.split(".")[:2]) for k in heads})
            self.logger.info(f"{len(heads)} head parameters start from scratch, as expected for "
                             f"converted backbone weights: {', '.join(groups)}")
        if backbone:
            self.logger.warning(
                f"{len(backbone)} BACKBONE parameters are missing from the checkpoint, e.g. "
                f"{', '.join(backbone[:5])}. The conversion is broken or the checkpoint is for "
                "another architecture: re-run tools/convert_to_d2.py and check its report.")
        if incompatible.unexpected_keys:
            self.logger.info(f"ignored {len(incompatible.unexpected_keys)} checkpoint tensors "
                             f"that the model has no place for (e.g. "
                             f"{', '.join(incompatible.unexpected_keys[:3])})")


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        plain = self.checkpointer
        self.checkpointer = TransferCheckpointer(plain.model, cfg.OUTPUT_DIR,
                                                 **plain.checkpointables)
        for hook in self._hooks:
            if isinstance(hook, hooks.PeriodicCheckpointer):
                hook.checkpointer = self.checkpointer

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
        raise TransferSetupError(f"no evaluator for data set {dataset_name} "
                                 f"(evaluator_type {kind!r})")

    @classmethod
    def _mapper(cls, cfg, is_train):
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            return SemSegDatasetMapper(cfg, is_train)
        return None  # detectron2's default

    @classmethod
    def build_train_loader(cls, cfg):
        # detectron2's loader from the config, with our mapping step (bad-image policy)
        spec = _train_loader_from_config(cfg, cls._mapper(cfg, True) or DatasetMapper(cfg, True))
        spec["dataset"] = SkipUnreadableImages(
            DatasetFromList(spec["dataset"], copy=False), spec.pop("mapper"),
            cfg.DATALOADER.BAD_IMAGES, cfg.OUTPUT_DIR)
        return build_detection_train_loader(**spec, mapper=None)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=cls._mapper(cfg, False))


def flatten_results(results) -> dict:
    """{"bbox/AP": ..., "segm/AP50": ..., "sem_seg/mIoU": ...} from detectron2's nested dict."""
    flat = {}
    for task, metrics in results.items():
        for name, value in metrics.items():
            flat[f"{task}/{name}"] = value
    return flat


def save_final_metrics(cfg, results, filename="final_metrics.json"):
    """Write the evaluation results as JSON in OUTPUT_DIR; returns the path."""
    path = os.path.join(cfg.OUTPUT_DIR, filename)
    text = json.dumps(results, indent=1, default=float)
    atomic_write(path, lambda f: f.write(text.encode()))  # the pipeline's "evaluated" marker
    return path
