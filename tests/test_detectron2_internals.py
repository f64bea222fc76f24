"""The detectron2 internals of ssl2det/detectron2_internals.py still behave as the project relies
on: a detectron2 release that changes one of them fails here, not silently in a run."""

import logging

import pytest
from detectron2.data import DatasetCatalog, build_detection_train_loader
from detectron2.engine import TrainerBase

from ssl2det.detectron2_internals import (TRAIN_LOOP_LOGGER, quiet_training_exceptions,
                                          train_loader_arguments)
from transfer.config import get_cfg


def test_train_loader_arguments_are_what_build_detection_train_loader_takes(shared_data):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("coco_2017_val",)  # builtin, from DETECTRON2_DATASETS (conftest)
    cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
    mapper = lambda d: {k: d[k] for k in ("file_name", "width", "height")}  # noqa: E731
    spec = train_loader_arguments(cfg, mapper)
    assert set(spec) == {"dataset", "sampler", "mapper", "total_batch_size",
                         "aspect_ratio_grouping", "num_workers"}
    dicts = DatasetCatalog.get("coco_2017_val")
    assert spec["mapper"] is mapper and spec["total_batch_size"] == 2
    assert {d["file_name"] for d in spec["dataset"]} <= {d["file_name"] for d in dicts}
    batch = next(iter(build_detection_train_loader(**spec)))
    assert len(batch) == 2 and "file_name" in batch[0]


class _Failing(TrainerBase):
    def run_step(self):
        raise ValueError("boom")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("quiet", [False, True])
def test_the_training_loop_logs_exceptions_to_the_logger_we_filter(quiet):
    logger, records = logging.getLogger(TRAIN_LOOP_LOGGER), _Records()
    logger.addHandler(records)
    try:
        if quiet:
            quiet_training_exceptions(lambda e: isinstance(e, ValueError))
        with pytest.raises(ValueError, match="boom"):  # raised either way
            _Failing().train(0, 2)
    finally:
        logger.removeHandler(records)
        logger.filters.clear()
    logged = [r for r in records.records if r.exc_info and isinstance(r.exc_info[1], ValueError)]
    assert len(logged) == (0 if quiet else 1)
