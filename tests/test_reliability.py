"""Faults injected on purpose, one test (or more) each, as listed in docs/reliability.md: kills
at any moment (also inside a checkpoint write), damaged and untrusted checkpoints, bad images,
bad configs, NaN losses, and a rank of a multi-process run that dies or hangs."""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from conftest import REPO
from helpers import load_checkpoint, run
from ssl2det.errors import PREEMPTED

PRETRAIN = [sys.executable, str(REPO / "tools" / "pretrain_net.py")]
TRAIN_NET = [sys.executable, str(REPO / "tools" / "train_net.py")]
#: MoCo v2 with InfoMin's jigsaw branch (a third view of patches, its head's step buffer)
MOCO = ["--config-file", str(REPO / "configs/pretrain/mocov2_r18_cifar.yaml"),
        "DATA.VAL_ROOT", "", "SOLVER.BATCH_SIZE", "16", "SOLVER.MAX_ITER", "6",
        "METHOD.MOCO.QUEUE_SIZE", "64", "LOG_PERIOD", "1", "DATA.NUM_WORKERS", "2",
        "INPUT.JIGSAW.ENABLED", "True", "INPUT.JIGSAW.SIZE", "24", "INPUT.JIGSAW.PATCH", "8"]


def _assert_same_final_state(a_dir, b_dir):
    a, b = load_checkpoint(a_dir / "model_final.pth"), load_checkpoint(b_dir / "model_final.pth")
    assert a["iteration"] == b["iteration"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # weights, BN statistics, MoCo queue and momentum encoder
        assert torch.equal(a["model"][key], b["model"][key]), key
    for x, y in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(x[k], y[k]) for k in x)


def _damage(path):
    """A checkpoint cut short, as by a full disk or an interrupted copy."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 3])


def _sigkill_when_written(proc, path, timeout_s=600):
    """SIGKILL `proc` as soon as `path` exists."""
    deadline = time.time() + timeout_s
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, f"run ended before {path.name}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


class CodeCarrier:
    """Unpickling this runs `touch <file>`: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- kills and damaged checkpoints: pretraining ----------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted_run(shared_data, tmp_path_factory):
    """MoCo v2 with the jigsaw branch (optimiser, queue, momentum encoder, the jigsaw's orders:
    every kind of state), 6 iterations."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = run(PRETRAIN + MOCO + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                     "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    yield out
    shutil.rmtree(out)  # its checkpoints are the module's alone


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_gives_the_uninterrupted_weights(
        uninterrupted_run, shared_data, tmp_path):
    args = MOCO + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                   "SOLVER.CHECKPOINT_PERIOD", "2"]
    # Kill as soon as the checkpoint of iteration 4 (model_0000003.pth) is on disk: the newest
    # one last_checkpoint names is then that one, or the one before (the kill landed between
    # the file and the pointer), or, on a loaded machine, a later one; only a run that finished
    # first proves nothing, and is repeated.
    for attempt in range(3):
        killed = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(PRETRAIN + args + ["OUTPUT_DIR", str(killed)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _sigkill_when_written(proc, killed / "model_0000003.pth")
        if (killed / "last_checkpoint").read_text() != "model_final.pth":
            break
    else:
        pytest.fail("the run finished before it could be killed, in 3 attempts")
    newest = (killed / "last_checkpoint").read_text()  # model_000000N.pth: N + 1 steps done

    resumed = run(PRETRAIN + ["--resume"] + args + ["OUTPUT_DIR", str(killed)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing at iteration {int(newest[6:13]) + 1}" in resumed.stdout
    _assert_same_final_state(uninterrupted_run, killed)


@pytest.mark.slow
def test_random_sigkills_also_inside_checkpoint_writes_lose_nothing(
        uninterrupted_run, shared_data, tmp_path):
    """A checkpoint after every iteration, so that a good share of the kills land while one is
    being written; after every kill each .pth on disk is whole, and the run that is resumed
    again and again ends with the weights of the uninterrupted run."""
    out = tmp_path / "run"
    args = PRETRAIN + ["--resume"] + MOCO + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                             "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out)]
    rng = random.Random(0)
    kills = 0
    while kills < 3:
        log_size = (out / "log.txt").stat().st_size if (out / "log.txt").exists() else 0
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300  # wait for this run's training loop, then a random moment
        while not (out / "log.txt").exists() or "Starting training" not in (
                out / "log.txt").read_text()[log_size:]:
            assert time.time() < deadline and proc.poll() is None, "the run did not start"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        if proc.poll() is not None:
            break  # it finished first
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        for path in out.glob("*.pth"):  # no checkpoint is ever half-written
            assert "model" in load_checkpoint(path), path
    final = run(args)
    assert final.returncode == 0, final.stderr[-3000:]
    assert kills >= 2, "the runs finished before they could be killed twice"
    assert not list(out.glob(".*.tmp")), "a resume leaves no unfinished temporary file behind"
    _assert_same_final_state(uninterrupted_run, out)


@pytest.mark.slow
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
        uninterrupted_run, shared_data, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted_run, out)
    for name in ("model_final.pth", "model_0000005.pth"):
        (out / name).unlink()
    (out / "last_checkpoint").write_text("model_0000003.pth")
    _damage(out / "model_0000003.pth")
    resumed = run(PRETRAIN + ["--resume"] + MOCO + [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "SOLVER.CHECKPOINT_PERIOD", "2",
        "OUTPUT_DIR", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "model_0000003.pth cannot be loaded" in resumed.stdout
    assert "Trying the previous checkpoint" in resumed.stdout
    assert "continuing at iteration 2" in resumed.stdout
    _assert_same_final_state(uninterrupted_run, out)


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_file_whole(tmp_path):
    from pretrain.engine.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(3, 3)
    checkpointer = AtomicCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    writer = ("import os, signal\n"
              "from ssl2det.io import atomic_write\n"
              "def write(f):\n"
              "    f.write(b'x' * 1_000_000)\n"
              "    f.flush()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)  # killed halfway through the write\n"
              f"atomic_write({str(tmp_path / 'model_0000001.pth')!r}, write)\n")
    child = subprocess.run([sys.executable, "-c", writer], cwd=REPO)
    assert child.returncode == -signal.SIGKILL
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert list(tmp_path.glob(".model_0000001.pth.*.tmp")), "the unfinished write is a temp file"
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp")), "a resume removes what the killed write left"


def test_a_kill_inside_the_first_checkpoint_write_is_cleaned_up_by_the_resume(tmp_path):
    """No last_checkpoint yet: the resume starts from scratch, without the killed write's file."""
    from pretrain.engine.checkpoint import AtomicCheckpointer

    (tmp_path / ".model_0000000.pth.abc123.tmp").write_bytes(b"x" * 1000)
    assert AtomicCheckpointer(torch.nn.Linear(3, 3), str(tmp_path)).resume_or_load(
        "", resume=True) == {}
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("bad", ["text", "truncated", "code", "no checkpoint left"])
def test_resume_skips_an_unreadable_checkpoint_and_refuses_code(bad, tmp_path, caplog):
    from pretrain.engine.checkpoint import AtomicCheckpointer, RunState
    from ssl2det.io import CheckpointError

    meta = {"format": "ssl2det-pretrain", "arch": "resnet18"}
    model = torch.nn.Linear(3, 3)
    AtomicCheckpointer(model, str(tmp_path), run_state=RunState(meta)).save("model_0000001",
                                                                           iteration=1)
    newest = tmp_path / "model_0000003.pth"
    marker = tmp_path / "code_ran"
    if bad == "text":
        newest.write_text("this is not a checkpoint")
    elif bad == "code":
        torch.save({"model": CodeCarrier(marker)}, newest)
    else:
        shutil.copy(tmp_path / "model_0000001.pth", newest)
        _damage(newest)
    if bad == "no checkpoint left":
        _damage(tmp_path / "model_0000001.pth")
    (tmp_path / "last_checkpoint").write_text(newest.name)

    checkpointer = AtomicCheckpointer(model, str(tmp_path), expected_meta=meta,
                                      run_state=RunState(meta))
    if bad == "no checkpoint left":
        with pytest.raises(CheckpointError, match="no usable checkpoint in .*model_0000003.pth, "
                                                  "model_0000001.pth"):
            checkpointer.resume_or_load("", resume=True)
        return
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 1
    assert "model_0000003.pth cannot be loaded" in caplog.text
    assert not marker.exists(), "unpickling ran the file's code"


def test_resume_refuses_instead_of_skipping_a_checkpoint_of_another_run(tmp_path):
    from pretrain.engine.checkpoint import AtomicCheckpointer, RunState
    from ssl2det.io import CheckpointError

    model = torch.nn.Linear(3, 3)
    mine = {"format": "ssl2det-pretrain", "arch": "resnet18"}
    AtomicCheckpointer(model, str(tmp_path), run_state=RunState(mine)).save("model_0000001")
    AtomicCheckpointer(model, str(tmp_path), run_state=RunState(dict(mine, arch="resnet50"))).save(
        "model_0000003")
    with pytest.raises(CheckpointError, match="arch was 'resnet50', now 'resnet18'"):
        AtomicCheckpointer(model, str(tmp_path), expected_meta=mine).resume_or_load("")


def test_stage_two_loads_refuse_code_in_pkl_and_pth_files(tmp_path):
    from ssl2det.io import UnreadableCheckpointError
    from transfer.checkpoint import TransferCheckpointer

    marker = tmp_path / "code_ran"
    with open(tmp_path / "weights.pkl", "wb") as f:
        pickle.dump({"model": {"w": CodeCarrier(marker)}, "__author__": "x"}, f)
    torch.save({"model": CodeCarrier(marker)}, tmp_path / "model_final.pth")
    checkpointer = TransferCheckpointer(torch.nn.Linear(3, 3))
    for name in ("weights.pkl", "model_final.pth"):
        with pytest.raises(UnreadableCheckpointError, match=name):
            checkpointer.load(str(tmp_path / name))
    assert not marker.exists(), "unpickling ran the file's code"
    with open(tmp_path / "arrays.pkl", "wb") as f:  # detectron2's own format still loads
        pickle.dump({"model": {"weight": torch.ones(3, 3).numpy()}, "__author__": "test"}, f)
    checkpointer.load(str(tmp_path / "arrays.pkl"))
    assert torch.equal(checkpointer.model.weight, torch.ones(3, 3))


# --- kills and damaged checkpoints: tools/train_net.py ---------------------------------------

@pytest.mark.slow
def test_train_net_killed_resumed_past_a_damaged_checkpoint_then_stopped_by_sigterm(tmp_path):
    """Stage two: a SIGKILL leaves only whole checkpoints; --resume skips the damaged newest one
    and continues from the one before at the right iteration; SIGTERM during that run finishes
    the step, writes model_N.pth and stops in one line (exit 75); its resume runs to the end.
    (Weights equal to an uninterrupted run are not claimed here: detectron2 restarts its data
    stream on resume.)"""
    voc = str(REPO / "datasets/raccoon_small")
    out = tmp_path / "run"
    args = TRAIN_NET + [
        "--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"),
        "--register-voc", "raccoon_small_train", voc, "train", "--voc-classes", "raccoon",
        "DATASETS.TRAIN", '("raccoon_small_train",)', "DATASETS.TEST", "()",
        "MODEL.ROI_HEADS.NUM_CLASSES", "1", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
        "TEST.PRECISE_BN.ENABLED", "False", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]
    resume = args[:2] + ["--resume"] + args[2:]
    proc = subprocess.Popen(args + ["SOLVER.MAX_ITER", "1000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _sigkill_when_written(proc, out / "model_0000003.pth")
    assert not (out / "model_final.pth").exists()
    for path in out.glob("*.pth"):
        assert "model" in load_checkpoint(path), path
    newest = out / (out / "last_checkpoint").read_text()
    _damage(newest)
    # The kill may land before or after last_checkpoint names the newest complete file; either
    # way the resume goes past the damaged one to the newest other checkpoint.
    previous_iteration = max(int(p.stem.split("_")[1]) for p in out.glob("model_*.pth")
                             if p != newest)

    resumed = subprocess.Popen(resume + ["SOLVER.MAX_ITER", "1000"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    # a checkpoint no earlier run wrote: the resumed run's signal handlers are in place
    written = max(int(p.stem.split("_")[1]) for p in out.glob("model_*.pth"))
    later = out / f"model_{written + 2:07d}.pth"
    deadline = time.time() + 600
    while not later.exists():
        assert resumed.poll() is None and time.time() < deadline, f"no {later.name}"
        time.sleep(0.05)
    resumed.send_signal(signal.SIGTERM)
    log, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == PREEMPTED and "Traceback" not in log, log[-4000:]
    assert f"{newest.name} cannot be loaded" in log and "Trying the previous checkpoint" in log
    assert f"Starting training from iteration {previous_iteration + 1}" in log
    line = next(x for x in log.splitlines() if x.startswith("error: stopped by SIGTERM"))
    iteration = int(line.split("after iteration ")[1].split(";")[0])
    assert load_checkpoint(out / f"model_{iteration:07d}.pth")["iteration"] == iteration
    assert "--resume" in line

    finished = run(resume + ["SOLVER.MAX_ITER", str(iteration + 2)])
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]
    assert f"Starting training from iteration {iteration + 1}" in finished.stdout + finished.stderr
    assert load_checkpoint(out / "model_final.pth")["iteration"] == iteration + 1


# --- bad images ------------------------------------------------------------------------------

@pytest.fixture()
def folder_with_bad_images(shared_data, tmp_path):
    """Two classes of real CIFAR JPEGs plus every kind of bad file ImageNet-like folders hold."""
    root = tmp_path / "images"
    sources = sorted((shared_data / "cifar10-small/test").glob("*/*.jpg"))[:24]
    for i, src in enumerate(sources):
        (root / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f"class{i % 2}" / f"good{i}.jpg")
    photo = Image.open(sources[0]).convert("RGB")
    bad = root / "class0"
    photo.convert("CMYK").save(bad / "cmyk.jpg")
    photo.convert("L").save(bad / "grayscale.jpg")
    photo.save(bad / "png_data.jpg", format="PNG")
    data = sources[1].read_bytes()
    (bad / "truncated.jpg").write_bytes(data[:len(data) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "page.jpg").write_text("<html>a web page saved as .jpg</html>")
    (bad / "notes.txt").write_text("not an image")
    return root


UNREADABLE = {"truncated.jpg", "empty.jpg", "page.jpg"}


def test_bad_images_are_decoded_or_skipped_and_listed(folder_with_bad_images, tmp_path):
    from pretrain.data import ImageFiles
    from ssl2det.images import read_bad_image_list

    report = tmp_path / "report"
    report.mkdir()
    folder = ImageFiles(str(folder_with_bad_images), bad_images="skip", report_dir=str(report))
    names = [os.path.basename(p) for p, _ in folder.samples]
    assert "notes.txt" not in names and len(names) == 24 + 6
    for index, name in enumerate(names):
        image, label = folder.read(index)
        assert image.mode == "RGB" and image.size == (32, 32), name
        if name not in UNREADABLE:  # decoded, whatever its colour space or real format
            assert folder.samples[names.index(name)][0].endswith(name)
    listed = {os.path.basename(p) for p in read_bad_image_list(str(report))}
    assert listed == UNREADABLE | {"notes.txt"}


def test_bad_images_can_be_made_fatal(folder_with_bad_images):
    from pretrain.data import ImageFiles
    from ssl2det.errors import DatasetError

    folder = ImageFiles(str(folder_with_bad_images), bad_images="error")
    names = [os.path.basename(p) for p, _ in folder.samples]
    with pytest.raises(DatasetError, match="truncated.jpg cannot be decoded .* DATA.BAD_IMAGES skip"):
        folder.read(names.index("truncated.jpg"))


@pytest.mark.slow
def test_pretraining_over_bad_images_finishes_or_stops_clearly(folder_with_bad_images, tmp_path):
    common = PRETRAIN + ["--config-file", str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"),
                         "DATA.ROOT", str(folder_with_bad_images), "DATA.VAL_ROOT", "",
                         "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "15", "SOLVER.EPOCHS", "1",
                         "DATA.NUM_WORKERS", "2", "LOG_PERIOD", "1"]
    skipped = run(common + ["OUTPUT_DIR", str(tmp_path / "skip")])
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "skipping unreadable image" in skipped.stdout + skipped.stderr
    assert "4 files of DATA.ROOT were skipped" in skipped.stdout
    listed = (tmp_path / "skip/bad_images.txt").read_text()
    assert all(name in listed for name in UNREADABLE)

    fatal = run(common + ["OUTPUT_DIR", str(tmp_path / "fatal"), "DATA.BAD_IMAGES", "error"])
    assert fatal.returncode == 1
    assert "cannot be decoded" in fatal.stderr and "DATA.BAD_IMAGES skip" in fatal.stderr
    assert "Traceback" not in fatal.stderr


@pytest.mark.slow
def test_train_net_skips_an_unusable_image_or_stops_clearly(tmp_path):
    """Stage two: a truncated JPEG and a photo with an EXIF rotation its annotation does not
    share (detectron2 applies the rotation, so its size no longer fits) among the training
    images of a VOC-layout set: skipped and listed, or the run stops naming the file. In the
    test set the same files stop the evaluation, named (a metric over fewer images would not
    compare)."""
    voc = tmp_path / "voc"
    names = [f"raccoon-{i}" for i in range(1, 5)]
    source = REPO / "datasets/raccoon_small"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for name in names:
        shutil.copy(source / "Annotations" / f"{name}.xml", voc / "Annotations")
        shutil.copy(source / "JPEGImages" / f"{name}.jpg", voc / "JPEGImages")
    for split in ("train", "test"):
        (voc / f"ImageSets/Main/{split}.txt").write_text("\n".join(names) + "\n")
    _damage(voc / "JPEGImages" / f"{names[1]}.jpg")
    rotated = voc / "JPEGImages" / f"{names[2]}.jpg"
    photo, exif = Image.open(rotated), Image.Exif()
    assert photo.width != photo.height
    exif[0x0112] = 6  # Orientation: rotate 90 degrees to display
    photo.save(rotated, exif=exif)
    common = TRAIN_NET + [
        "--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"),
        "--register-voc", "tiny_train", str(voc), "train", "--register-voc", "tiny_test",
        str(voc), "test", "--voc-classes", "raccoon", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "1"]
    args = common + ["DATASETS.TRAIN", '("tiny_train",)', "DATASETS.TEST", "()",
                     "SOLVER.MAX_ITER", "3"]
    skipped = run(args + ["OUTPUT_DIR", str(tmp_path / "skip")])
    assert skipped.returncode == 0, (skipped.stdout + skipped.stderr)[-3000:]
    assert "skipping unreadable image" in skipped.stdout + skipped.stderr
    listed = (tmp_path / "skip/bad_images.txt").read_text()
    assert f"{names[1]}.jpg" in listed and f"{names[2]}.jpg\tSizeMismatchError" in listed

    fatal = run(args + ["OUTPUT_DIR", str(tmp_path / "fatal"), "DATALOADER.BAD_IMAGES", "error"])
    assert fatal.returncode == 1 and "Traceback" not in fatal.stderr
    assert (f"{names[1]}.jpg cannot be decoded" in fatal.stderr
            or f"{names[2]}.jpg cannot be used" in fatal.stderr), fatal.stderr[-2000:]
    assert "DATALOADER.BAD_IMAGES skip" in fatal.stderr

    evaluated = run(common + ["--eval-only", "DATASETS.TEST", '("tiny_test",)',
                               "OUTPUT_DIR", str(tmp_path / "eval")])
    assert evaluated.returncode == 1 and "Traceback" not in evaluated.stderr
    assert "cannot be evaluated" in evaluated.stderr and (
        f"{names[1]}.jpg" in evaluated.stderr or f"{names[2]}.jpg" in evaluated.stderr)
    assert not (tmp_path / "eval/final_metrics.json").exists()


# --- bad configs and arguments ---------------------------------------------------------------

def test_empty_data_folder_and_indivisible_batch_get_one_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    base = PRETRAIN + ["--config-file", str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"),
                       "OUTPUT_DIR", str(tmp_path / "out")]
    empty = run(base + ["DATA.ROOT", str(tmp_path / "empty")])
    assert empty.returncode != 0 and "Traceback" not in empty.stderr
    assert f"cannot read image folder '{tmp_path / 'empty'}'" in empty.stderr
    # as a launcher would start rank 0 of 4: the check comes before waiting for the others
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29599"}
    indivisible = run(base + ["DATA.ROOT", str(tmp_path / "empty"), "SOLVER.BATCH_SIZE", "30"],
                       env=env)
    assert indivisible.returncode == 2 and "Traceback" not in indivisible.stderr
    assert "SOLVER.BATCH_SIZE 30 is not divisible by the 4 processes" in indivisible.stderr


# --- NaN / inf losses ------------------------------------------------------------------------

def _trainer_with_nan_inputs(shared_data, out, nan_iterations, max_skips):
    """MoCo v2 whose input batch is NaN at the given iterations: the NaN flows through BN
    (running statistics), the queue and the loss, as a corrupt batch or an overflow would."""
    from pretrain.config import load_config
    from pretrain.engine.run import build_trainer

    cfg = load_config(str(REPO / "configs/pretrain/mocov2_r18_cifar.yaml"), [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "DATA.VAL_ROOT", "",
        "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "6",
        "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.CHECKPOINTS_TO_KEEP", "0",  # (read below)
        "METHOD.MOCO.QUEUE_SIZE", "16", "LOG_PERIOD", "1",
        "DATA.NUM_WORKERS", "0", "SOLVER.MAX_NONFINITE_SKIPS", str(max_skips),
        "OUTPUT_DIR", str(out)])
    trainer = build_trainer(cfg)
    clean_batch = trainer._next_batch

    def batch_with_nans():
        views, labels = clean_batch()
        if trainer.iter in nan_iterations:
            views = [v * float("nan") for v in views]
        return views, labels

    trainer._next_batch = batch_with_nans
    return trainer


def _all_finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_steps_are_skipped_without_a_trace(shared_data, tmp_path):
    trainer = _trainer_with_nan_inputs(shared_data, tmp_path, nan_iterations={2, 3}, max_skips=2)
    trainer.train(0, trainer.max_iter)
    assert trainer.skipped_steps == 2
    after_1 = load_checkpoint(tmp_path / "model_0000001.pth")
    after_3 = load_checkpoint(tmp_path / "model_0000003.pth")
    for key, value in after_1["model"].items():  # weights, BN statistics, queue, pointer, EMA
        assert torch.equal(value, after_3["model"][key]), key
    assert _all_finite(load_checkpoint(tmp_path / "model_final.pth")["model"])
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert rows[-1]["skipped_steps"] == 2


@pytest.mark.slow
def test_persistent_nan_stops_the_run_keeping_the_last_good_checkpoint(shared_data, tmp_path):
    from pretrain.engine.trainer import NonFiniteLossError

    trainer = _trainer_with_nan_inputs(shared_data, tmp_path, nan_iterations={2, 3, 4, 5},
                                       max_skips=1)
    with pytest.raises(NonFiniteLossError, match="NaN/inf in 2 steps .*MAX_NONFINITE_SKIPS 1"):
        trainer.train(0, trainer.max_iter)
    assert not (tmp_path / "model_final.pth").exists()
    last = load_checkpoint(tmp_path / (tmp_path / "last_checkpoint").read_text())
    assert last["iteration"] == 2 and _all_finite(last["model"])


# --- a rank dies or hangs --------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 20000ms for recv operation",
    "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.88.0.12]:20023",
    "Application timeout caused pair closure",  # gloo on two nodes, a peer frozen (SIGSTOP)
])
def test_what_gloo_says_of_a_lost_peer_is_a_peer_failure(text, monkeypatch):
    """Each becomes rank 0's one-line DistributedFaultError, not a traceback; other errors
    stay what they are."""
    from pretrain.engine import trainer

    monkeypatch.setattr(trainer, "get_world_size", lambda: 2)
    assert trainer.is_peer_failure(RuntimeError(text))
    assert not trainer.is_peer_failure(RuntimeError("CUDA out of memory"))


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL], ids=["dies"])
def test_a_failed_rank_stops_the_other_with_a_clear_error(fault, shared_data, tmp_path):
    """Two processes started as a launcher (torchrun, srun) would; rank 1 is killed in the
    middle of training. Rank 0 must stop at once with a message (not hang, no traceback). (A
    frozen rank, which rank 0 gives up on after DIST.TIMEOUT_S, is the two-node study's first
    fault: tests/test_slurm.py.)"""
    out = tmp_path / "run"
    port = str(29600 + fault)
    cmd = PRETRAIN + ["--config-file", str(REPO / "configs/pretrain/infocl_cifar10_barlow.yaml"),
                      "DATA.ROOT", str(shared_data / "cifar10-small/test"), "DATA.VAL_ROOT", "",
                      "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "16", "SOLVER.MAX_ITER", "500",
                      "LOG_PERIOD", "1", "DATA.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
                      "DIST.TIMEOUT_S", "15", "OUTPUT_DIR", str(out)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2",
                                   "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
                                   "MASTER_PORT": port})
             for r in (0, 1)]
    try:
        deadline = time.time() + 300
        while not (out / "metrics.json").exists() or len(
                (out / "metrics.json").read_text().splitlines()) < 2:
            assert time.time() < deadline and procs[0].poll() is None, "training did not start"
            time.sleep(0.1)
        procs[1].send_signal(fault)
        start = time.time()
        _, err = procs[0].communicate(timeout=120)
        waited = time.time() - start
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 1
    assert "error: rank 0 stopped at iteration" in err and "--resume" in err
    assert "Traceback" not in err
    assert waited < (10 if fault == signal.SIGKILL else 15 + 30)


@pytest.mark.slow
def test_a_nan_on_one_rank_makes_every_rank_skip_the_step(shared_data, tmp_path):
    """MoCo v2 without shuffle/sync BN: only rank 1's loss is NaN at iteration 1. Both ranks
    must skip it (else DDP's gradient all-reduce would wait forever for the rank that skipped),
    and stay identical."""
    from ddp_helpers import run_with_nan_on_one_rank

    overrides = ["METHOD.NAME", "mocov2", "MODEL.ARCH", "resnet18", "MODEL.CIFAR_STEM", "True",
                 "METHOD.MOCO.SHUFFLE_BN", "False", "MODEL.SYNC_BN", "False",
                 "METHOD.MOCO.QUEUE_SIZE", "16", "DATA.ROOT", str(shared_data / "cifar10-small/test"),
                 "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "3",
                 "SOLVER.OPTIMIZER", "adam", "SOLVER.BASE_LR", "1e-3", "SOLVER.CHECKPOINT_PERIOD",
                 "1000", "LOG_PERIOD", "1", "DATA.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
                 "MODEL.CHANNELS_LAST", "False", "KNN.ENABLED", "False", "DIST.TIMEOUT_S", "30",
                 "OUTPUT_DIR", str(tmp_path)]
    ranks = run_with_nan_on_one_rank(overrides, port=29655, out_dir=str(tmp_path))
    assert [r["skipped"] for r in ranks] == [1, 1]
    for key, value in ranks[0]["model"].items():
        if key.startswith(("encoder.", "head.")) and "running" not in key:
            assert torch.equal(value, ranks[1]["model"][key]), key
    assert _all_finite(ranks[0]["model"]) and _all_finite(ranks[1]["model"])


def test_periodic_checkpoints_are_pruned_to_the_newest_few_never_the_one_to_resume(tmp_path):
    """Only what the run's saves wrote is pruned or counted: a user's model_0000002.pth, a link
    named like a checkpoint and a foreign model_0000099.pth are left alone and do not count as
    the newest (round five: all three were deleted or counted)."""
    from ssl2det.checkpoint import WRITTEN, prune_periodic_checkpoints

    for i in (1, 3, 5, 7, 9):
        (tmp_path / f"model_{i:07d}.pth").write_bytes(b"x")
    (tmp_path / WRITTEN).write_text("".join(f"model_{i:07d}.pth\n" for i in (1, 3, 5, 7, 9)))
    (tmp_path / "model_final.pth").write_bytes(b"x")
    (tmp_path / "model_0000002.pth").write_bytes(b"a user's")
    (tmp_path / "model_0000099.pth").write_bytes(b"from elsewhere")
    (tmp_path / "keep.pth").write_bytes(b"x")
    (tmp_path / "model_0000004.pth").symlink_to(tmp_path / "keep.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")  # (a resume chose an old one)
    removed = prune_periodic_checkpoints(str(tmp_path), keep=2)
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == ["model_0000003.pth", "model_0000005.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "keep.pth", "model_0000001.pth", "model_0000002.pth", "model_0000004.pth",
        "model_0000007.pth", "model_0000009.pth", "model_0000099.pth", "model_final.pth"]
    assert prune_periodic_checkpoints(str(tmp_path), keep=0) == []  # 0 keeps every one

