"""The pretraining engine end to end on the CPU: outputs, clear errors for bad configs and data
(kills, resumes and other faults: test_reliability.py)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from helpers import call, load_checkpoint, run

PRETRAIN = [sys.executable, str(REPO / "tools" / "pretrain_net.py")]


def _pretrain(args, **kwargs):
    return run(PRETRAIN + args, **kwargs)


@pytest.mark.slow
def test_one_epoch_simclr_r18_on_cifar10_small_writes_every_output(shared_data, tmp_path):
    out, images = tmp_path / "run", tmp_path / "images"
    for folder in sorted((shared_data / "cifar10-small/test").iterdir()):  # 50 of each class
        (images / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:50]:
            (images / folder.name / image.name).symlink_to(image)
    result = _pretrain(["--config-file", str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"),
                   "DATA.ROOT", str(images), "DATA.VAL_ROOT", str(images),
                   "OUTPUT_DIR", str(out), "SOLVER.EPOCHS", "1", "SOLVER.BATCH_SIZE", "25",
                   "SOLVER.CHECKPOINT_PERIOD", "10", "LOG_PERIOD", "5", "DATA.NUM_WORKERS", "2",
                   "KNN.MAX_TRAIN_IMAGES", "1000",
                   # 16 px keeps the test short; NCHW because oneDNN's NHWC is slow at toy sizes
                   "INPUT.SIZE", "16", "MODEL.CHANNELS_LAST", "False"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "model_0000009.pth").is_file() and (out / "model_0000019.pth").is_file()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [4, 9, 14, 19]  # 500 images / 25 = 20 iterations
    for r in rows:
        assert {"iteration", "loss", "lr", "data_time", "time"} <= r.keys()
    assert 0 <= rows[-1]["knn_top1"] <= 100
    final = load_checkpoint(out / "model_final.pth")
    assert final["run_state"]["meta"]["arch"] == "resnet18"
    assert "encoder.layer4.1.conv2.weight" in final["model"]


@pytest.mark.parametrize("overrides, message", [
    (["SOLVER.BATCH_SIZ", "64"], "unknown config key 'SOLVER.BATCH_SIZ'. Did you mean SOLVER.BATCH_SIZE"),
    (["SOLVER.BATCH_SIZE", "many"], "SOLVER.BATCH_SIZE"),
    (["MODEL.ARCH", "resnet34"], "MODEL.ARCH = 'resnet34' is not one of resnet18, resnet50"),
    (["METHOD.NAME", "swav"], "METHOD.NAME = 'swav' is not one of"),
    (["DATA.ROOT", "/nonexistent/folder"], "cannot read image folder '/nonexistent/folder'"),
    (["DATA.ROOT", ""], "DATA.ROOT is empty"),
    (["SOLVER.BATCH_SIZE"], "KEY VALUE pairs"),
])
def test_bad_config_gets_one_clear_message_and_no_traceback(overrides, message, tmp_path):
    from pretrain.cli import main

    args = ["--config-file", REPO / "configs/pretrain/infocl_cifar10_simclr.yaml",
            "OUTPUT_DIR", tmp_path, *overrides]
    # in this process (the entry point's own process: the first case, and the tests that run it)
    result = _pretrain(list(map(str, args))) if "SOLVER.BATCH_SIZ" in overrides else call(main, args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_every_shipped_pretrain_config_loads():
    from pretrain.config import load_config

    configs = sorted((REPO / "configs" / "pretrain").glob("[!B]*.yaml"))
    assert len(configs) >= 19
    for path in configs:
        cfg = load_config(str(path))
        named = [cfg.METHOD.NAME, *cfg.OBJECTIVES, "infomin" * (cfg.INPUT.AUGMENTATION == "infomin")]
        words = set(path.stem.split("_"))  # the name says what runs: a method or objective
        assert any(set(n.split("_")) <= words for n in named if n), path.name


@pytest.mark.slow
def test_two_cpu_processes_through_the_launcher(shared_data, tmp_path):
    """tools/pretrain.sh --num-gpus 0 --num-procs 2: torchrun, gloo, shuffle BN, the distributed
    kNN monitor and rank-0-only outputs, on InfoMin's config (its jigsaw branch: finite on two
    processes)."""
    out = tmp_path / "ddp"
    result = subprocess.run(
        [str(REPO / "tools/pretrain.sh"),
         str(REPO / "configs/pretrain/infomin_mocov2_r50_imagenet.yaml"),
         "--num-gpus", "0", "--num-procs", "2", "--dist-url", "tcp://127.0.0.1:29533",
         "DATA.ROOT", str(shared_data / "cifar10-small/test"),
         "DATA.VAL_ROOT", str(shared_data / "cifar10-small/test"), "KNN.MAX_TRAIN_IMAGES", "200",
         "MODEL.ARCH", "resnet18", "MODEL.CHANNELS_LAST", "False", "METHOD.MOCO.QUEUE_SIZE", "64",
         "INPUT.SIZE", "16", "INPUT.JIGSAW.SIZE", "24", "INPUT.JIGSAW.PATCH", "8",
         "SOLVER.BATCH_SIZE", "16", "SOLVER.MAX_ITER", "2", "LOG_PERIOD", "1",
         "DATA.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "rank 1/2" in (out / "log.txt.rank1").read_text()
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1] and "knn_top1" in rows[-1]
    assert all(math.isfinite(r["loss_jigsaw"]) for r in rows)
    state = load_checkpoint(out / "model_final.pth")["model"]
    assert "encoder.bn1.running_mean" in state


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    from pretrain.engine.checkpoint import AtomicCheckpointer, RunState
    from ssl2det.io import CheckpointError

    model = torch.nn.Linear(2, 2)
    meta = {"format": "ssl2det-pretrain", "version": 1, "arch": "resnet18", "method": "simclr"}
    AtomicCheckpointer(model, str(tmp_path), run_state=RunState(meta)).save("model_final")
    path = str(tmp_path / "model_final.pth")
    other = AtomicCheckpointer(model, str(tmp_path), expected_meta=dict(meta, method="byol"))
    with pytest.raises(CheckpointError, match="method was 'simclr', now 'byol'"):
        other.load(path)
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project's pretraining"):
        other.load(str(tmp_path / "plain.pth"))
    assert AtomicCheckpointer(model, str(tmp_path), expected_meta=meta).load(path)["run_state"][
        "meta"] == meta
