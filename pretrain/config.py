"""Stage-one configuration: defaults in code, YAML files with `_BASE_`, `KEY VALUE` overrides.

The same conventions as detectron2 (fvcore's CfgNode), so one style serves both stages. The
defaults are data (below); each plug-in (method, objective) registers the function that adds its
own keys, and `get_cfg()` calls them all, as detectron2 projects do. Keys unknown
to the defaults are refused with the closest known names. Which METHOD.NAME and OBJECTIVES exist
is checked where they are built (pretrain/methods/build.py).
"""

import difflib
import logging

from fvcore.common.config import CfgNode as CN

from ssl2det.config import check_config_chain, get_key
from ssl2det.errors import ConfigError

from .methods import METHODS
from .objectives import OBJECTIVES

_C = CN()
_C.SEED = 0
_C.OUTPUT_DIR = "output/pretrain"
# Iterations between logged metrics (metrics.json, TensorBoard, progress bar loss). Scalars are
# read from the device only then, so the loop has no per-step host sync.
_C.LOG_PERIOD = 20

_C.DATA = CN()
_C.DATA.ROOT = ""  # ImageNet-layout training folder: ROOT/class/*.jpg
_C.DATA.VAL_ROOT = ""  # optional, same layout: the kNN monitor's test set
_C.DATA.NUM_WORKERS = 4  # loader worker processes per rank
_C.DATA.PERSISTENT_WORKERS = True
# An image that cannot be decoded: "skip" (warn, list it in OUTPUT_DIR/bad_images.txt, use the
# next image in its place) or "error" (stop with the file's name)
_C.DATA.BAD_IMAGES = "skip"
# Decode the training set once into the training device's memory (uint8; every image of one
# size, as CIFAR or STL) and crop, flip and augment batches there: the fastest input for small
# images on a GPU (pretrain/data/device_bank.py). simclr recipe only.
_C.DATA.DECODE_ONCE = False
# Keep each image folder's file list between starts (pretrain/data/file_index.py): ImageNet's
# 1.28M files are listed once, then each start checks the folders' modification times. Ours.
_C.DATA.FILE_INDEX = True
_C.DATA.INDEX_DIR = ""  # where the lists are kept; "" for OUTPUT_DIR/file_index
# List every image folder again and write its index anew. Needed where files were added to a
# folder whose modification time was then put back (rsync -t, a restored backup): the index,
# which trusts the folders' times, cannot see that. Ours.
_C.DATA.REBUILD_FILE_INDEX = False

_C.INPUT = CN()
_C.INPUT.SIZE = 224  # side of the square views
_C.INPUT.AUGMENTATION = "simclr"  # view recipe: "simclr" or "infomin"
_C.INPUT.CROP_SCALE = (0.08, 1.0)  # RandomResizedCrop area range
_C.INPUT.COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
_C.INPUT.COLOR_JITTER_PROB = 0.8
_C.INPUT.GRAYSCALE_PROB = 0.2
_C.INPUT.BLUR_PROB = 0.5  # 0 for 32 px images (SimCLR's CIFAR recipe)
# Per view (view 1, view 2), overriding BLUR_PROB and the default of no solarisation: BYOL's
# asymmetric views are blur (1.0, 0.1), solarise (0.0, 0.2). Empty: the same for both views.
_C.INPUT.VIEW_BLUR_PROB = ()
_C.INPUT.VIEW_SOLARIZE_PROB = ()
# Colour jitter, grayscale, blur and normalisation batched on the training device instead of in
# the loader workers (which then only decode, crop and flip): for GPUs the CPUs cannot feed.
# simclr recipe only. Its small differences are listed in pretrain/data/device_augment.py.
# None (the default): on when training on a CUDA device (simclr recipe), said in the log.
_C.INPUT.AUGMENT_ON_DEVICE = None
# With the augmentation on the device: decode the JPEGs there too, in batches (nvJPEG through
# torchvision.io.decode_jpeg); the workers only read files and draw crops. Ours; measured by
# tools/device/run.sh. pretrain/data/device_decode.py.
_C.INPUT.DECODE_ON_DEVICE = False
# A third view of patches for a jigsaw branch (InfoMin's PIRL-style branch; MoCo-style methods,
# METHOD.MOCO.JIGSAW_BETA): a random resized crop of SIZE px and SCALE, flipped, cut into a
# GRID x GRID grid of cells with a PATCH px patch at a random place in each (PyContrast's values)
_C.INPUT.JIGSAW = CN()
_C.INPUT.JIGSAW.ENABLED = False
_C.INPUT.JIGSAW.SIZE = 255
_C.INPUT.JIGSAW.SCALE = (0.6, 1.0)
_C.INPUT.JIGSAW.GRID = 3
_C.INPUT.JIGSAW.PATCH = 64
_C.INPUT.MEAN = (0.485, 0.456, 0.406)  # torchvision's; the detectron2 configs use the same
_C.INPUT.STD = (0.229, 0.224, 0.225)
# The frozen-encoder evaluation (kNN monitor, linear probe): image side and normalisation, when
# they differ from training (InfoCL's STL-10: pretrained at 64 px with 0.5 / 0.5, evaluated at
# 96 px with STL-10's statistics). 0 / empty: as in training.
_C.INPUT.EVAL_SIZE = 0
_C.INPUT.EVAL_MEAN = ()
_C.INPUT.EVAL_STD = ()

_C.MODEL = CN()
_C.MODEL.ARCH = "resnet50"  # "resnet18" or "resnet50" (torchvision)
_C.MODEL.CIFAR_STEM = False  # 3x3 first conv, no max-pool (for 32-64 px images)
_C.MODEL.STEM_STRIDE = 1  # that conv's stride: 1 (CIFAR), 2 (InfoCL's STL-10 at 64 px)
# The encoder's initial weights: "torchvision" (its ResNet's: Kaiming-normal convolutions, BN 1 and
# 0; ours) or "pytorch" (every layer's own default, as InfoCL's ResNets, which set none)
_C.MODEL.INIT = "torchvision"
_C.MODEL.DEVICE = "auto"  # "auto" (cuda if available), "cuda", "cpu"
_C.MODEL.SYNC_BN = True  # synchronise BN statistics across ranks under DDP
# > 0: the encoder's (and heads') BN normalises each view over this many images, whatever
# SYNC_BN says: more than a process's batch, in groups of BN_GROUP_IMAGES / (batch per process)
# consecutive ranks; less, over equal parts of each process's batch (pretrain/models/split_bn.py;
# ghost batch norm). InfoCL's ImageNet: 256, its 4-GPU DataParallel's share of 1024; MoCo v2 and
# InfoMin: 32, their 8 GPUs' share of 256. 0: SYNC_BN decides.
_C.MODEL.BN_GROUP_IMAGES = 0
# NHWC (True) or NCHW (False) activations and weights; None (ours): by the device's rule, NHWC on
# GPUs, AVX-512 CPUs and under 16-bit autocast, on AVX2 CPUs where the first stage's feature
# maps are 32 px or more (measured: docs/performance.md; ssl2det/precision.py)
_C.MODEL.CHANNELS_LAST = None
_C.MODEL.COMPILE = False  # torch.compile the model

# Objectives added to the method's loss, by name: "infocl_rc", "infocl_lbe", "superinfo",
# "mrcl" (pretrain/objectives; each adds its own keys).
_C.OBJECTIVES = ()

_C.METHOD = CN()
_C.METHOD.NAME = "simclr"  # pretrain/methods: "simclr", "mocov2", "byol", "barlow"
_C.METHOD.PROJECTOR = CN()
_C.METHOD.PROJECTOR.HIDDEN_DIM = 2048
_C.METHOD.PROJECTOR.OUT_DIM = 128
_C.METHOD.PROJECTOR.NUM_LAYERS = 2
_C.METHOD.PROJECTOR.BN = True  # BN after each hidden linear layer
# METHOD.<NAME> keys: each method's add_config, registered with it (get_cfg below)

_C.SOLVER = CN()
_C.SOLVER.OPTIMIZER = "lars"  # "lars", "sgd", "adam", "adamw"
_C.SOLVER.BASE_LR = 0.3
# lr = BASE_LR * BATCH_SIZE / REFERENCE_BATCH_SIZE ("linear"), its square root ("sqrt"), or as is
_C.SOLVER.LR_SCALING = "linear"
_C.SOLVER.REFERENCE_BATCH_SIZE = 256
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.WEIGHT_DECAY = 1e-6
_C.SOLVER.LARS_ETA = 0.001  # LARS trust coefficient
# The trust ratio of a parameter whose norm is zero (BN shifts start at 0): 1.0 (ours: it learns
# at the plain rate) or 0.0 (InfoCL's LARS: such a parameter never moves)
_C.SOLVER.LARS_ZERO_NORM_TRUST = 1.0
# Fused optimiser steps: torch's single-kernel SGD/Adam/AdamW, multi-tensor LARS (same update)
_C.SOLVER.FUSED = True
# Biases and norm-layer parameters: no weight decay and no LARS adaptation (SimCLR/BYOL recipe)
_C.SOLVER.EXCLUDE_BIAS_AND_NORM = True
_C.SOLVER.WARMUP_EPOCHS = 10.0
# After the warm-up: "cosine" (step by step), "cosine_per_epoch" (changed once per epoch, as
# InfoCL's LARS runs), "constant" (InfoCL's Adam runs)
_C.SOLVER.LR_SCHEDULE = "cosine"
_C.SOLVER.FINAL_LR_FRACTION = 0.0  # cosine decays to BASE_LR * this
# cosine_per_epoch counts epochs from this: 0 (torch, MoCo, InfoCL), 1 (PyContrast's InfoMin)
_C.SOLVER.LR_EPOCH_OFFSET = 0
# LARS's momentum: "torch" (v = m v + d; w -= lr v) or "classic" (v = m v + lr d; w -= v: SimCLR's
# TensorFlow LARS, InfoCL's copy of it); they differ only while the learning rate changes
_C.SOLVER.LARS_MOMENTUM = "torch"
# Biases and norm-layer parameters learn at BASE_LR times this (Barlow Twins: 0.0048 / 0.2)
_C.SOLVER.BIAS_LR_FACTOR = 1.0
_C.SOLVER.EPOCHS = 200
_C.SOLVER.MAX_ITER = 0  # > 0 caps the total iterations (smoke runs); the schedule follows it
_C.SOLVER.BATCH_SIZE = 256  # global, over all ranks
_C.SOLVER.CHECKPOINT_PERIOD = 5000  # iterations
# Periodic checkpoints kept (the newest N; model_final.pth and the one last_checkpoint names
# always stay); 0 keeps every one. Ours: 3 (a 200-epoch ImageNet R50 run would leave ~100 of
# 336 MB).
_C.SOLVER.CHECKPOINTS_TO_KEEP = 3
# Steps whose loss is NaN/inf are skipped (no update) up to this many times in a run, then the
# run stops with the last good checkpoint kept; 0 stops at the first. Ours: 10.
_C.SOLVER.MAX_NONFINITE_SKIPS = 10
_C.SOLVER.AMP = CN()
# Mixed precision where the device computes DTYPE natively (CUDA; CPUs with AVX512_BF16 or
# AMX for bfloat16); elsewhere the step runs in float32 and the log says why (ssl2det/precision.py)
_C.SOLVER.AMP.ENABLED = False
_C.SOLVER.AMP.DTYPE = "bfloat16"  # "bfloat16", or "float16" (with a gradient scaler)
# True: autocast even where DTYPE is emulated (an AVX2 CPU: a bf16 step ~25x the float32 time)
_C.SOLVER.AMP.FORCE = False

_C.DIST = CN()
# Seconds a process waits in a collective for the others. A rank that dies is noticed at once
# (its connections close); this bounds the wait for one that hangs, which holds every GPU of
# the job meanwhile. It must exceed the longest pause of one rank alone: writing an R50
# checkpoint (seconds), rank 0 listing DATA.ROOT for the file index while the others wait (about
# 3 s for 1.28M files on tmpfs, minutes on a slow network file system). Ours: 600 (NCCL's own
# default in torch), not torch's 1800 for gloo: a hung rank costs 10 minutes of the job, not 30.
_C.DIST.TIMEOUT_S = 600
# The network interface the process group uses (GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME); empty:
# the one whose address reaches MASTER_ADDR (ssl2det.distributed.choose_interface). Ours.
_C.DIST.SOCKET_IFNAME = ""

_C.KNN = CN()
_C.KNN.ENABLED = True  # needs DATA.VAL_ROOT
# labelled folder for the memory bank; empty: DATA.ROOT (set it when DATA.ROOT has no classes)
_C.KNN.TRAIN_ROOT = ""
_C.KNN.PERIOD_EPOCHS = 1
_C.KNN.K = 200
_C.KNN.TEMPERATURE = 0.1
_C.KNN.MAX_TRAIN_IMAGES = 50000  # memory bank: at most this many training images (0: all)
_C.KNN.BATCH_SIZE = 256

# The frozen-encoder linear probe's protocol (pretrain/eval/linear.py): "ours", "infocl"
# (InfoCL's CIFAR/STL eval_lr.py), "infocl_imagenet" (its eval_lr_imagenet.py: trained on
# augmented images); `python -m pretrain.eval` uses it unless --protocol says otherwise
_C.PROBE = CN()
_C.PROBE.PROTOCOL = "ours"

#: Keys that change how a run runs, not what it learns (devices, workers, periods, where its
#: outputs go, the kNN monitor): the pipeline leaves a finished run alone when only these change.
#: Entries ending in "." are prefixes.
RUNTIME_KEYS = ("OUTPUT_DIR", "LOG_PERIOD", "DATA.NUM_WORKERS", "DATA.PERSISTENT_WORKERS",
                "DATA.BAD_IMAGES", "DATA.FILE_INDEX", "DATA.INDEX_DIR", "DATA.REBUILD_FILE_INDEX",
                "KNN.", "DIST.", "PROBE.", "SOLVER.CHECKPOINT_PERIOD",
                "SOLVER.CHECKPOINTS_TO_KEEP", "SOLVER.MAX_NONFINITE_SKIPS", "SOLVER.FUSED",
                "MODEL.DEVICE", "MODEL.CHANNELS_LAST", "MODEL.COMPILE", "SOLVER.AMP.FORCE")
#: What a resumed run (--resume) may change: the runtime keys, how long it runs, where its data
#: is. A change of any other key (the model, the method, the objectives, the optimiser, the
#: batch, the augmentation) refuses the resume.
RESUMABLE_CHANGES = RUNTIME_KEYS + ("DATA.ROOT", "DATA.VAL_ROOT", "SOLVER.EPOCHS",
                                    "SOLVER.MAX_ITER", "INPUT.AUGMENT_ON_DEVICE",
                                    "INPUT.DECODE_ON_DEVICE", "DATA.DECODE_ONCE")

#: What the frozen-encoder evaluation (pretrain/eval) reads from a run's config.
PROBE_KEYS = ("SEED", "MODEL.ARCH", "MODEL.CIFAR_STEM", "MODEL.STEM_STRIDE", "MODEL.INIT",
              "INPUT.SIZE", "INPUT.MEAN", "INPUT.STD", "INPUT.EVAL_SIZE", "INPUT.EVAL_MEAN",
              "INPUT.EVAL_STD", "KNN.K", "KNN.TEMPERATURE", "KNN.TRAIN_ROOT")

def get_cfg() -> CN:
    """A copy of the defaults, with the keys of every registered method and objective."""
    cfg = _C.clone()
    for plugin in (*METHODS.values(), *OBJECTIVES.values()):
        if plugin.add_config:
            plugin.add_config(cfg)
    return cfg


def _all_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, CN):
            yield from _all_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _explain(err, cfg, source):
    text = str(err)
    key = text.split(":")[-1].strip().strip("'\"") if "Non-existent" in text else ""
    if key:
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return ConfigError(f"{source}: unknown config key '{key}'.{hint} The known keys are the "
                           "defaults in pretrain/config.py and the methods' and objectives' "
                           "add_*_config.")
    return ConfigError(f"{source}: {text}")


def load_config(config_file: str = "", opts=()) -> CN:
    """Defaults <- YAML file (with `_BASE_`) <- `KEY VALUE` pairs, then validated and frozen."""
    cfg = get_cfg()
    if config_file:
        check_config_chain(config_file)
        try:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise _explain(e, cfg, config_file) from None
    if len(opts) % 2:
        raise ConfigError(f"overrides must come in KEY VALUE pairs; got an odd list: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise _explain(e, cfg, "command-line override") from None
    validate(cfg)
    cfg.freeze()
    return cfg


_CHOICES = {
    "MODEL.ARCH": ("resnet18", "resnet50"),
    "MODEL.DEVICE": ("auto", "cuda", "cpu"),
    "MODEL.INIT": ("torchvision", "pytorch"),
    "PROBE.PROTOCOL": ("ours", "infocl", "infocl_imagenet"),
    "INPUT.AUGMENTATION": ("simclr", "infomin"),
    "DATA.BAD_IMAGES": ("skip", "error"),
    "SOLVER.OPTIMIZER": ("lars", "sgd", "adam", "adamw"),
    "SOLVER.LR_SCALING": ("linear", "sqrt", "none"),
    "SOLVER.LR_SCHEDULE": ("cosine", "cosine_per_epoch", "constant"),
    "SOLVER.LARS_MOMENTUM": ("torch", "classic"),
    "SOLVER.AMP.DTYPE": ("bfloat16", "float16"),
}


def validate(cfg):
    """Value checks the type system of CfgNode cannot make."""
    for key, allowed in _CHOICES.items():
        if get_key(cfg, key) not in allowed:
            raise ConfigError(f"{key} = {get_key(cfg, key)!r} is not one of {', '.join(allowed)}")
    for key in ("SOLVER.BATCH_SIZE", "SOLVER.CHECKPOINT_PERIOD", "INPUT.SIZE", "LOG_PERIOD",
                "DIST.TIMEOUT_S", "METHOD.PROJECTOR.HIDDEN_DIM", "METHOD.PROJECTOR.OUT_DIM",
                "METHOD.PROJECTOR.NUM_LAYERS"):
        if get_key(cfg, key) <= 0:
            raise ConfigError(f"{key} must be positive, got {get_key(cfg, key)}")
    if cfg.DATA.NUM_WORKERS < 0:
        raise ConfigError(f"DATA.NUM_WORKERS must be 0 (load in the training process) or more, "
                          f"got {cfg.DATA.NUM_WORKERS}")
    scale = tuple(cfg.INPUT.CROP_SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"INPUT.CROP_SCALE {scale} must be (smallest, largest) area fractions "
                          "with 0 < smallest <= largest <= 1, e.g. (0.08, 1.0)")
    for key in ("INPUT.VIEW_BLUR_PROB", "INPUT.VIEW_SOLARIZE_PROB"):
        if len(get_key(cfg, key)) not in (0, 2):
            raise ConfigError(f"{key} {get_key(cfg, key)} needs one probability per view, two, "
                              "or none")
    if cfg.MODEL.CHANNELS_LAST not in (None, True, False):
        raise ConfigError(f"MODEL.CHANNELS_LAST = {cfg.MODEL.CHANNELS_LAST!r} is not one of "
                          "True, False, None (None: chosen by the device)")
    if cfg.INPUT.AUGMENT_ON_DEVICE not in (None, True, False):
        raise ConfigError(f"INPUT.AUGMENT_ON_DEVICE = {cfg.INPUT.AUGMENT_ON_DEVICE!r} is not "
                          "one of True, False, None (None: on with a CUDA device)")
    if cfg.INPUT.JIGSAW.ENABLED:
        j = cfg.INPUT.JIGSAW
        if cfg.METHOD.NAME != "mocov2":
            raise ConfigError("INPUT.JIGSAW.ENABLED: the jigsaw branch contrasts with MoCo's "
                              f"keys and queue: METHOD.NAME mocov2, not {cfg.METHOD.NAME!r}")
        if cfg.INPUT.AUGMENT_ON_DEVICE or cfg.DATA.DECODE_ONCE:
            raise ConfigError("INPUT.JIGSAW.ENABLED needs the loader-side views: set "
                              "INPUT.AUGMENT_ON_DEVICE False and DATA.DECODE_ONCE False")
        if j.PATCH > j.SIZE // j.GRID:
            raise ConfigError(f"INPUT.JIGSAW.PATCH {j.PATCH} does not fit the cells of "
                              f"SIZE {j.SIZE} // GRID {j.GRID} = {j.SIZE // j.GRID} px")
    if cfg.INPUT.DECODE_ON_DEVICE and (cfg.INPUT.AUGMENT_ON_DEVICE is False
                                       or cfg.DATA.DECODE_ONCE):
        raise ConfigError("INPUT.DECODE_ON_DEVICE decodes for INPUT.AUGMENT_ON_DEVICE: it cannot "
                          "go with INPUT.AUGMENT_ON_DEVICE False or DATA.DECODE_ONCE True")
    for key in ("INPUT.AUGMENT_ON_DEVICE", "INPUT.DECODE_ON_DEVICE", "DATA.DECODE_ONCE"):
        if get_key(cfg, key) and cfg.INPUT.AUGMENTATION != "simclr":
            raise ConfigError(f"{key} supports INPUT.AUGMENTATION simclr only; got "
                              f"{cfg.INPUT.AUGMENTATION!r}")
    if cfg.SOLVER.LR_EPOCH_OFFSET not in (0, 1):
        raise ConfigError(f"SOLVER.LR_EPOCH_OFFSET must be 0 or 1, got {cfg.SOLVER.LR_EPOCH_OFFSET}")
    if not 0 <= cfg.SOLVER.LARS_ZERO_NORM_TRUST <= 1:
        raise ConfigError("SOLVER.LARS_ZERO_NORM_TRUST must be between 0 and 1, got "
                          f"{cfg.SOLVER.LARS_ZERO_NORM_TRUST}")
    if cfg.SOLVER.MAX_NONFINITE_SKIPS < 0:
        raise ConfigError("SOLVER.MAX_NONFINITE_SKIPS must be 0 or more, got "
                          f"{cfg.SOLVER.MAX_NONFINITE_SKIPS}")
    if cfg.SOLVER.EPOCHS <= 0 and cfg.SOLVER.MAX_ITER <= 0:
        raise ConfigError("set SOLVER.EPOCHS or SOLVER.MAX_ITER to a positive number")
    if cfg.SOLVER.CHECKPOINTS_TO_KEEP < 0:
        raise ConfigError("SOLVER.CHECKPOINTS_TO_KEEP must be 0 (keep all) or more, got "
                          f"{cfg.SOLVER.CHECKPOINTS_TO_KEEP}")
    if cfg.SOLVER.MAX_ITER < 0:  # 0 means "from SOLVER.EPOCHS"; below it, a slip
        raise ConfigError(f"SOLVER.MAX_ITER must be positive, or 0 to run SOLVER.EPOCHS; got "
                          f"{cfg.SOLVER.MAX_ITER}")
    if cfg.KNN.ENABLED and cfg.KNN.PERIOD_EPOCHS < 1:
        raise ConfigError(f"KNN.PERIOD_EPOCHS must be 1 or more (epochs between kNN "
                          f"evaluations), got {cfg.KNN.PERIOD_EPOCHS}; KNN.ENABLED False turns "
                          "the monitor off")


def settle_knn_monitor(cfg: CN, given=()) -> CN:
    """The kNN monitor reads DATA.VAL_ROOT. A folder the user gave (`given`: the keys set on the
    command line) must exist: a ConfigError before training otherwise. One that only a config
    file names (a base config's default) and that does not exist turns the monitor off with a
    warning, so that `DATA.ROOT my/train` alone starts a run."""
    # here, not at the top: the pipeline's planner reads configs without the data package,
    # which pulls in torchvision (about 2 s a process)
    from .data.layouts import layout_of

    root = cfg.DATA.VAL_ROOT
    if not (cfg.KNN.ENABLED and root) or layout_of(root).exists(root):
        return cfg
    if "DATA.VAL_ROOT" in given:
        raise ConfigError(f"DATA.VAL_ROOT {root} is not a folder, an archive or shards; give "
                          "the labelled test images (ROOT/<class>/<image>.jpg), or DATA.VAL_ROOT "
                          "'' to train without the kNN monitor")
    logging.getLogger("pretrain").warning(
        f"the kNN monitor is off: DATA.VAL_ROOT {root!r}, named by the config file, does not "
        "exist here; give DATA.VAL_ROOT on the command line to monitor kNN top-1")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.KNN.ENABLED = False
    cfg.freeze()
    return cfg
