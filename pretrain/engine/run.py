"""Build everything a pretraining run needs from a config, and run it (pretrain/cli.py)."""

import inspect
import json
import logging
import os

import torch
from detectron2.engine import hooks
from detectron2.utils.events import JSONWriter, TensorboardXWriter
from detectron2.utils.logger import setup_logger

from ssl2det.checkpoint import KeepLastCheckpoints
from ssl2det.device import resolve_device
from ssl2det.distributed import (convert_sync_batchnorm, get_world_size, init_distributed,
                                 is_main_process, rank_groups, this_rank_address)
from ssl2det.errors import ConfigError
from ssl2det.images import read_bad_image_list
from ssl2det.output_dir import claim_output_dir
from ssl2det.placement import placement
from ssl2det.preemption import CheckpointOnSignal

from ..checkpoint_format import run_meta
from ..data import augment_on_device, build_pretrain_loader
from ..data.device_augment import DeviceAugment
from ..methods import build_method
from ..models.split_bn import split_batch_norm
from .arithmetic import SCALE_FILE, choose_arithmetic, read_scale, record_arithmetic
from .checkpoint import AtomicCheckpointer, RunState
from .hooks import KNNMonitor, ProgressBar
from .optim import build_optimizer, scaled_lr
from .trainer import PretrainTrainer

logger = logging.getLogger("pretrain")


class PretrainRun:
    """A pretraining run built from its config in steps a project can override one at a time
    (as detectron2's DefaultTrainer's build_* methods): the process group and logs, the method,
    its arithmetic (ssl2det.precision), the model the loop calls, the optimiser, the loader,
    the checkpointer, the hooks. `build()` calls them in order and returns the trainer."""

    def __init__(self, cfg, resume: bool = False):
        self.cfg, self.resume = cfg, resume

    def build(self) -> PretrainTrainer:
        cfg = self.cfg
        self.setup()
        method = self.build_method()
        arithmetic = self.arithmetic
        model = self.build_model(method)
        optimizer = build_optimizer(cfg, method)
        torch.manual_seed(cfg.SEED + self.rank)  # rank-specific randomness from here on
        on_device = not cfg.DATA.DECODE_ONCE and augment_on_device(cfg, self.device)
        loader, sampler = build_pretrain_loader(cfg, self.rank, self.world, self.device,
                                                on_device)
        precision = arithmetic["precision"]
        scaler = torch.amp.GradScaler(self.device.type,
                                      enabled=precision.autocast == torch.float16)
        augment = DeviceAugment(cfg) if on_device or cfg.DATA.DECODE_ONCE else None
        trainer = PretrainTrainer(cfg, method, model, optimizer, loader, sampler, self.device,
                                  scaler, device_transform=augment, precision=precision,
                                  channels_last=arithmetic["channels_last"])
        checkpointer = self.build_checkpointer(trainer)
        trainer.register_hooks(self.build_hooks(trainer, checkpointer))
        return trainer

    def setup(self):
        """Join the process group, claim OUTPUT_DIR, set up the logs, say the scale."""
        cfg = self.cfg
        self.device = resolve_device(cfg.MODEL.DEVICE)
        where = placement()
        # checked before any process waits for the others
        if cfg.SOLVER.BATCH_SIZE % where.world_size:
            raise ConfigError(f"SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE} is not divisible by "
                              f"the {where.world_size} processes; use a multiple of "
                              f"{where.world_size}")
        if where.rank == 0:  # one run per folder: a second one stops here, before it writes
            claim_output_dir(cfg.OUTPUT_DIR)
        self.rank, self.world, self.local = init_distributed(
            self.device.type, cfg.DIST.TIMEOUT_S, cfg.DIST.SOCKET_IFNAME)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.local)
        for name, abbrev in (("pretrain", "pretrain"), ("detectron2", "d2"), ("fvcore", "fvcore")):
            setup_logger(cfg.OUTPUT_DIR, distributed_rank=self.rank, name=name,
                         abbrev_name=abbrev)
        logger.info(f"rank {self.rank}/{self.world} on {self.device}; config:\n{cfg.dump()}")
        ranks = [None] * self.world  # where each rank runs: its host, address and interface
        if self.world > 1:
            torch.distributed.all_gather_object(ranks, this_rank_address())
        self.previous = read_scale(cfg.OUTPUT_DIR) if self.resume else {}  # (rewritten next)
        if self.rank == 0:
            say_scale(cfg, self.world, ranks)

    def build_method(self):
        """The method with its objectives, BN synchronised or split as the config says, in the
        arithmetic chosen for this device (ssl2det.precision)."""
        cfg, world = self.cfg, self.world
        torch.manual_seed(cfg.SEED)  # same initial weights on every rank (DDP checks)
        method = build_method(cfg)
        self.arithmetic = choose_arithmetic(cfg, self.device)
        if world > 1:
            method = synchronise_batch_norm(cfg, method, world, self.device.type)
        splits = batch_norm_splits(cfg, world)
        if splits > 1:  # (objectives whose BN is global keep theirs)
            method = split_batch_norm(method, splits,
                                      skip=[o for o in method.objectives if o.global_batch_norm])
        layout = torch.channels_last if self.arithmetic["channels_last"] else None
        return method.to(self.device, memory_format=layout or torch.contiguous_format)

    def build_model(self, method):
        """What the loop calls: the method, in DDP across processes, compiled if asked."""
        model = method
        if self.world > 1:
            model = torch.nn.parallel.DistributedDataParallel(
                method, device_ids=[self.local] if self.device.type == "cuda" else None,
                **_NO_FORWARD_BUFFER_SYNC)
        return torch.compile(model) if self.cfg.MODEL.COMPILE else model

    def build_checkpointer(self, trainer):
        """The atomic checkpointer; with --resume, the trainer continues from its newest
        readable checkpoint; rank 0 writes the run's config.yaml and arithmetic then."""
        cfg = self.cfg
        meta = run_meta(cfg)
        checkpointer = AtomicCheckpointer(trainer.method, cfg.OUTPUT_DIR,
                                          save_to_disk=self.rank == 0, expected_meta=meta,
                                          config=cfg, run_state=RunState(meta, cfg.dump()),
                                          optimizer=trainer.optimizer, scaler=trainer.scaler)
        trainer.start_iter = 0
        if self.resume:
            # the newest readable checkpoint, which need not be the one last_checkpoint names;
            # {} when there is none yet (the run starts, after removing unfinished writes)
            extra = checkpointer.resume_or_load("", resume=True)
            if extra:
                trainer.start_iter = extra["iteration"] + 1
                logger.info(f"resumed: continuing at iteration {trainer.start_iter}")
        if self.rank == 0:  # after the resume's checks: a refused resume leaves them alone
            with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
                f.write(cfg.dump())
            record_arithmetic(cfg.OUTPUT_DIR, self.arithmetic, trainer.start_iter,
                              self.previous)
        return checkpointer

    def build_hooks(self, trainer, checkpointer) -> list:
        cfg, main = self.cfg, self.rank == 0
        writers = [JSONWriter(os.path.join(cfg.OUTPUT_DIR, "metrics.json")),
                   TensorboardXWriter(cfg.OUTPUT_DIR)] if main else []
        knn = cfg.KNN.ENABLED and bool(cfg.DATA.VAL_ROOT)
        return [
            hooks.IterationTimer(warmup_iter=0),
            KNNMonitor(cfg, trainer.method.encoder, self.device,
                       self.arithmetic["channels_last"]) if knn else None,
            hooks.PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
            KeepLastCheckpoints(cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_PERIOD,
                                cfg.SOLVER.CHECKPOINTS_TO_KEEP, main),
            hooks.PeriodicWriter(writers, period=cfg.LOG_PERIOD) if writers else None,
            CheckpointOnSignal(checkpointer),
            ProgressBar(cfg.SOLVER.BATCH_SIZE),
        ]


def build_trainer(cfg, resume: bool = False) -> PretrainTrainer:
    return PretrainRun(cfg, resume).build()


# Buffers stay each rank's own during training (BN statistics of its batch, a MoCo queue it
# fills itself) and are equal at the start (one seed). torch 2.13 renamed the switch; older
# torch (a GPU image's 2.11) has only the old name.
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(
        torch.nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False})


def batch_norm_splits(cfg, world: int) -> int:
    """Into how many parts each process's batch is split for the encoder's BN: MODEL.
    BN_GROUP_IMAGES below the batch per process asks for parts of that many images."""
    images, per_process = cfg.MODEL.BN_GROUP_IMAGES, cfg.SOLVER.BATCH_SIZE // world
    if not images or images >= per_process:
        return 1
    if per_process % images:
        raise ConfigError(f"MODEL.BN_GROUP_IMAGES {images} does not divide the batch per "
                          f"process, {per_process} ({cfg.SOLVER.BATCH_SIZE} over {world}): "
                          "choose a SOLVER.BATCH_SIZE or number of processes it divides")
    return per_process // images


def batch_norm_ranks(cfg, world: int) -> int:
    """How many consecutive ranks' batches the encoder's BN normalises together: 1 (each its
    own), `world` (all: SYNC_BN), or MODEL.BN_GROUP_IMAGES' worth."""
    images = cfg.MODEL.BN_GROUP_IMAGES
    if not images:
        return world if cfg.MODEL.SYNC_BN else 1
    per_process = cfg.SOLVER.BATCH_SIZE // world
    if images < per_process:
        return 1  # parts of each process's batch (batch_norm_splits)
    ranks = max(1, images // per_process)
    if ranks > world or images % per_process:
        ranks = min(ranks, world)
        logger.warning(f"MODEL.BN_GROUP_IMAGES {images}: with {world} processes of {per_process} "
                       f"images batch norm sees {ranks * per_process} per view instead")
    if world % ranks:
        raise ConfigError(f"MODEL.BN_GROUP_IMAGES {images} asks batch-norm groups of {ranks} of "
                          f"the {world} processes, which do not divide them; use a number of "
                          f"processes divisible by {ranks}")
    return ranks


def synchronise_batch_norm(cfg, method, world: int, device_type: str):
    """The encoder's and heads' BN over groups of batch_norm_ranks() ranks; objectives that
    declare global_batch_norm over all ranks."""
    ranks = batch_norm_ranks(cfg, world)
    global_objectives = [o for o in method.objectives if o.global_batch_norm]
    if ranks > 1:
        group = None if ranks == world else rank_groups(ranks)
        method = convert_sync_batchnorm(method, device_type, group, skip=global_objectives)
    for objective in global_objectives:
        convert_sync_batchnorm(objective, device_type)  # (in place: the module is kept)
    return method


def say_scale(cfg, world: int, ranks=()) -> dict:
    """What the global batch and the learning rate become on `world` processes, said and saved
    in OUTPUT_DIR/scale.json: SOLVER.BATCH_SIZE is the global batch (each process takes its
    share), the learning rate follows the global batch only, so more nodes or GPUs change the
    per-process batch and, without SyncBN, what batch norm sees."""
    s = cfg.SOLVER
    per_process = s.BATCH_SIZE // world
    nodes = placement().nodes
    bn_ranks = batch_norm_ranks(cfg, world) if world > 1 else 1
    synced = bn_ranks > 1
    scale = {"world_size": world, "nodes": nodes, "batch": s.BATCH_SIZE,
             "batch_per_process": per_process, "lr": scaled_lr(cfg),
             "lr_rule": f"SOLVER.BASE_LR {s.BASE_LR:g}" + ("" if s.LR_SCALING == "none" else
                        f" x {'sqrt of ' if s.LR_SCALING == 'sqrt' else ''}(BATCH_SIZE "
                        f"{s.BATCH_SIZE} / REFERENCE_BATCH_SIZE {s.REFERENCE_BATCH_SIZE})"),
             "batch_norm_images": per_process * bn_ranks // batch_norm_splits(cfg, world),
             "ranks": [r for r in ranks if r]}
    logger.info(f"batch {s.BATCH_SIZE} over {world} process(es) on {nodes} node(s): "
                f"{per_process} per process; lr {scale['lr']:g} ({scale['lr_rule']}); batch norm "
                f"sees {scale['batch_norm_images']} images of a view per step"
                + ("" if synced or world == 1 else " (no BN synchronisation)"))
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with open(os.path.join(cfg.OUTPUT_DIR, SCALE_FILE), "w") as f:
        json.dump(scale, f, indent=1)
    return scale


def run_pretraining(cfg, resume: bool = False) -> PretrainTrainer:
    trainer = build_trainer(cfg, resume)
    trainer.train(trainer.start_iter, trainer.max_iter)
    if get_world_size() > 1:
        torch.distributed.barrier()
    bad = read_bad_image_list(cfg.OUTPUT_DIR) if is_main_process() else {}
    if bad:
        logger.warning(f"{len(bad)} files of DATA.ROOT were skipped as unreadable or not images; "
                       f"the list is in {os.path.join(cfg.OUTPUT_DIR, 'bad_images.txt')}")
    return trainer
