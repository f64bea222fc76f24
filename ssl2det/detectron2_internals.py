"""The detectron2 internals this project relies on, in one place: everything else uses public
API (hooks, `build_train_loader`/`build_hooks` overrides, checkpointers, evaluators).
tests/test_detectron2_internals.py fails when a detectron2 release changes one of them."""

import logging

from detectron2.data.build import _train_loader_from_config
from detectron2.engine import defaults
from detectron2.utils import comm

#: The logger detectron2's TrainerBase.train reports an exception of the loop to, with its
#: traceback, before re-raising it.
TRAIN_LOOP_LOGGER = "detectron2.engine.train_loop"


def train_loader_arguments(cfg, mapper) -> dict:
    """The keyword arguments `build_detection_train_loader(cfg, mapper=mapper)` builds its loader
    from (dataset dicts, sampler, mapper, total_batch_size, aspect_ratio_grouping, num_workers),
    so that the data set can be wrapped before the loader is made. detectron2 has no public way
    to get them: `_train_loader_from_config` is what its `@configurable` calls."""
    return _train_loader_from_config(cfg, mapper)


class _DropReported(logging.Filter):
    def __init__(self, is_reported):
        super().__init__()
        self.is_reported = is_reported

    def filter(self, record):
        return not (record.exc_info and self.is_reported(record.exc_info[1]))


def quiet_training_exceptions(is_reported) -> None:
    """Keep TrainerBase.train from logging a traceback for the exceptions `is_reported(e)` says
    the caller turns into a one-line message (the exception itself is still raised).
    Idempotent per predicate."""
    logger = logging.getLogger(TRAIN_LOOP_LOGGER)
    if not any(isinstance(f, _DropReported) and f.is_reported is is_reported
               for f in logger.filters):
        logger.addFilter(_DropReported(is_reported))


def set_local_process_group(group) -> None:
    """The group of this machine's processes, which detectron2's `launch` sets for the workers
    it spawns (`comm.get_local_rank` and `get_local_size` read it). Our CPU launch of one
    process per machine sets it itself: detectron2's launch needs CUDA for more than one."""
    comm._LOCAL_PROCESS_GROUP = group


def allow_ddp_on_cpus() -> None:
    """detectron2's DefaultTrainer wraps its model with `create_ddp_model`, which gives DDP
    `device_ids=[local rank]`; torch refuses those for a model on the CPU. With this, a CPU
    model is wrapped with `device_ids=None` (one process per machine over gloo). Idempotent."""
    original = defaults.create_ddp_model
    if getattr(original, "allows_cpus", False):
        return

    def create_ddp_model(model, **kwargs):
        if all(p.device.type == "cpu" for p in model.parameters()):
            kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    create_ddp_model.allows_cpus = True
    defaults.create_ddp_model = create_ddp_model
