"""What a hostile or careless user does, each with the outcome docs/reliability.md promises: config
files that would run code, two runs in one folder, orphaned workers, preemption signals, resumes
that would change the run, odd file names, a learning rate that explodes the weights, and the
slips that must end in one line, not a traceback."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from helpers import one_line_error, run, wait_until
from ssl2det.errors import PREEMPTED

PRETRAIN = [sys.executable, str(REPO / "tools" / "pretrain_net.py")]
TRAIN_NET = [sys.executable, str(REPO / "tools" / "train_net.py")]
TINY_PRETRAIN = ["--config-file", str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"),
                 "DATA.VAL_ROOT", "", "INPUT.SIZE", "16", "SOLVER.BATCH_SIZE", "16",
                 "LOG_PERIOD", "1", "DATA.NUM_WORKERS", "0", "MODEL.CHANNELS_LAST", "False"]
VOC_CPU = ["--config-file", str(REPO / "configs/cpu/voc_faster_rcnn_cpu.yaml"),
           "--register-voc", "raccoon_small_train", str(REPO / "datasets/raccoon_small"), "train",
           "--voc-classes", "raccoon", "DATASETS.TRAIN", '("raccoon_small_train",)',
           "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4", "INPUT.MIN_SIZE_TRAIN", "(128,)",
           "INPUT.MAX_SIZE_TRAIN", "160", "TEST.PRECISE_BN.ENABLED", "False",
           "DATALOADER.NUM_WORKERS", "0"]


def _logged_a_step(run_folder) -> bool:
    """metrics.json holds a line: training has begun, so its signal handlers are in place
    (detectron2's writer creates the file empty when the run is set up)."""
    metrics = run_folder / "metrics.json"
    return metrics.is_file() and metrics.stat().st_size > 0


def _as_from_a_terminal():
    """SIGINT back to its default, as a terminal's foreground command has it: a shell that
    starts the suite in the background (CI's may) leaves SIGINT ignored, and Python then never
    turns Ctrl-C into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


# --- configs that would run code -------------------------------------------------------------

def _code_carrying_configs(tmp_path):
    """A config whose _BASE_ carries a tag that would create MARKER, and one that carries it
    itself; both stages and the pipeline's run file are tried with them."""
    marker = tmp_path / "MARKER"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    (tmp_path / "base.yaml").write_text(f"SEED: {tag}\n")
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nOUTPUT_DIR: out\n")
    (tmp_path / "direct.yaml").write_text(f"SEED: {tag}\n")
    return marker, [tmp_path / "child.yaml", tmp_path / "direct.yaml"]


def test_config_files_are_read_as_plain_data_in_both_stages_and_the_pipeline(tmp_path):
    from pretrain.config import load_config
    from ssl2det.errors import ConfigError
    from transfer.config import merge_config
    from pipeline.cli import load_spec

    marker, (child, direct) = _code_carrying_configs(tmp_path)
    for read, path in ((load_config, child), (load_config, direct), (merge_config, child),
                       (merge_config, direct), (load_spec, direct)):
        with pytest.raises(ConfigError, match=r"python/object/apply:os.system.*refused"):
            read(str(path))
    assert not marker.exists()


def test_train_net_refuses_a_code_carrying_config_in_one_line(tmp_path):
    marker, files = _code_carrying_configs(tmp_path)
    result = run(TRAIN_NET + ["--config-file", str(files[0]), "OUTPUT_DIR", str(tmp_path / "o")])
    one_line_error(result, 2, "base.yaml, line 1", "is refused")
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("SEED: [1, 2\n", "is not valid YAML"),
    ("_BASE_: nowhere.yaml\n", "_BASE_ file of"),
    ("", "is empty"),
    ("- SEED\n- 1\n", "holds a list at the top"),
])
def test_yaml_problems_are_named_in_both_stages(text, message, tmp_path):
    from pretrain.config import load_config
    from ssl2det.errors import ConfigError
    from transfer.config import merge_config

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for read in (load_config, merge_config):
        with pytest.raises(ConfigError, match=message):
            read(str(path))


# --- one run per folder; children die with their parent -------------------------------------

@pytest.fixture()
def held_folder(tmp_path):
    """A folder whose lock another live process holds: (folder, that process)."""
    folder = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ssl2det.output_dir import claim_output_dir\n"
         f"claim_output_dir({str(folder)!r})\nprint('held', flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    yield folder, holder
    holder.kill()
    holder.wait()


@pytest.mark.slow
def test_a_second_run_in_a_held_folder_stops_naming_the_holder(held_folder, shared_data):
    folder, holder = held_folder
    pretrain = run(PRETRAIN + ["--resume"] + TINY_PRETRAIN + [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "OUTPUT_DIR", str(folder)])
    one_line_error(pretrain, 2, f"is in use by process {holder.pid}")
    train_net = run(TRAIN_NET + VOC_CPU + ["--resume", "OUTPUT_DIR", str(folder)])
    one_line_error(train_net, 2, f"is in use by process {holder.pid}")
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # neither wrote anything

    holder.kill()
    holder.wait()
    from ssl2det.output_dir import claim_output_dir

    claim_output_dir(str(folder))  # the kernel released the dead holder's lock


def test_a_child_of_the_runner_dies_with_its_parent(tmp_path):
    """The pipeline's runner (ssl2det.process.run_logged) is killed with SIGKILL: its child, a
    stage, gets SIGTERM from the kernel instead of training on as an orphan."""
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys\nfrom ssl2det.process import run_logged\n"
                               f"run_logged([sys.executable, '-c', {child!r}], {str(tmp_path / 'log')!r})"],
                              cwd=REPO)
    wait_until(lambda: pid_file.exists() and pid_file.read_text(), "the child to start")
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until(lambda: not _alive(child_pid), "the orphan to end", timeout_s=120)


# --- preemption ------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_the_resume_continues_after_it(shared_data, tmp_path):
    out = tmp_path / "run"
    args = TINY_PRETRAIN + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                            "SOLVER.MAX_ITER", "2000", "SOLVER.CHECKPOINT_PERIOD", "100000",
                            "OUTPUT_DIR", str(out)]
    proc = subprocess.Popen(PRETRAIN + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = out / "metrics.json"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
              "training to run")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == PREEMPTED and "Traceback" not in err, err[-3000:]
    line = next(x for x in err.splitlines() if x.startswith("error: stopped by SIGTERM"))
    iteration = int(line.split("after iteration ")[1].split(";")[0])
    saved = torch.load(out / f"model_{iteration:07d}.pth", weights_only=True)
    assert saved["iteration"] == iteration and "--resume" in line

    resumed = run(PRETRAIN + ["--resume"] + args[:-4] + ["SOLVER.MAX_ITER", str(iteration + 3),
                                                         "OUTPUT_DIR", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing at iteration {iteration + 1}" in resumed.stdout + resumed.stderr
    changes = next(x for x in resumed.stdout.splitlines() if "resuming with changed settings" in x)
    assert f"SOLVER.MAX_ITER 2000 -> {iteration + 3}" in changes


@pytest.mark.slow
def test_a_torchrun_worker_whose_agent_is_killed_checkpoints_and_ends(shared_data, tmp_path):
    """A worker started as torchrun starts it (TORCHELASTIC_RUN_ID set) by a parent that is then
    SIGKILLed, as a `kill -9` of the agent or of the pipeline would: it must not train on."""
    out, pid_file = tmp_path / "run", tmp_path / "worker.pid"
    worker = PRETRAIN + TINY_PRETRAIN + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                         "SOLVER.MAX_ITER", "2000", "OUTPUT_DIR", str(out)]
    parent = subprocess.Popen([sys.executable, "-c",
                               "import os, subprocess, sys, time\n"
                               f"p = subprocess.Popen({worker!r}, env=dict(os.environ, "
                               "TORCHELASTIC_RUN_ID='test'))\n"
                               f"open({str(pid_file)!r}, 'w').write(str(p.pid))\ntime.sleep(600)"])
    metrics = out / "metrics.json"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 2,
              "training to run")
    worker_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    wait_until(lambda: not _alive(worker_pid), "the orphaned worker to end", timeout_s=300)
    assert list(out.glob("model_*.pth")), "it wrote a checkpoint before it ended"


# --- resumes that would change the run -------------------------------------------------------

@pytest.mark.slow
def test_a_resume_refuses_a_changed_model_or_optimiser_and_lists_allowed_changes(shared_data,
                                                                                 tmp_path):
    from pretrain.config import load_config
    from pretrain.engine.run import build_trainer, run_pretraining
    from ssl2det.io import CheckpointError

    base = TINY_PRETRAIN[2:] + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)]
    config = TINY_PRETRAIN[1]
    run_pretraining(load_config(config, base))
    for change, named in ((["METHOD.PROJECTOR.OUT_DIM", "64"], "METHOD.PROJECTOR.OUT_DIM 128 -> 64"),
                          (["SOLVER.OPTIMIZER", "sgd"], "SOLVER.OPTIMIZER 'adam' -> 'sgd'"),
                          (["OBJECTIVES", '("infocl_lbe",)'], "OBJECTIVES [] -> ['infocl_lbe']")):
        with pytest.raises(CheckpointError, match=named.replace("[", r"\[").replace("]", r"\]")):
            build_trainer(load_config(config, base + change), resume=True)
    trainer = build_trainer(load_config(config, base + ["SOLVER.MAX_ITER", "3"]), resume=True)
    assert trainer.start_iter == 1 and trainer.max_iter == 3


@pytest.mark.slow
def test_stage_two_resume_refuses_another_model(tmp_path):
    out = tmp_path / "run"
    first = run(TRAIN_NET + VOC_CPU + ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out)])
    assert first.returncode == 0, first.stderr[-3000:]
    changed = run(TRAIN_NET + VOC_CPU + ["--resume", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                                          "MODEL.RESNETS.DEPTH", "101", "OUTPUT_DIR", str(out)])
    one_line_error(changed, 2, "MODEL.RESNETS.DEPTH 50 -> 101",
                    "MODEL.ROI_HEADS.NUM_CLASSES 1 -> 3")

    # without the config of the earlier run to compare with, the weights must still fit
    (out / "config.yaml").unlink()
    changed = run(TRAIN_NET + VOC_CPU + ["--resume", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                                          "OUTPUT_DIR", str(out)])
    one_line_error(changed, 2, "does not fit this model", "roi_heads.box_predictor")


# --- file names, exploding weights -----------------------------------------------------------

def test_bad_images_with_odd_names_are_listed_escaped_one_per_line(shared_data, tmp_path):
    from pretrain.data import ImageFiles
    from ssl2det.images import read_bad_image_list

    root = tmp_path / "images" / "class0"
    root.mkdir(parents=True)
    good = sorted((shared_data / "cifar10-small/test").glob("*/*.jpg"))[0].read_bytes()
    (root / "good.jpg").write_bytes(good)
    odd = [os.fsdecode(b"bad\xff.jpg"), "tab\tand\nnewline.jpg", "back\\slash.jpg"]
    for name in odd:
        (root / name).write_bytes(good[:100])  # truncated
    report = tmp_path / "report"
    folder = ImageFiles(str(tmp_path / "images"), report_dir=str(report))
    for i in range(len(folder)):
        assert folder.read(i)[0].size == (32, 32)
    lines = (report / "bad_images.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and all(line.count("\t") == 1 for line in lines)
    listed = {os.path.basename(p) for p in read_bad_image_list(str(report))}
    assert listed == {"bad\\xff.jpg", "tab\\tand\\nnewline.jpg", "back\\\\slash.jpg"}


@pytest.mark.slow
def test_a_learning_rate_that_explodes_the_weights_gets_the_right_advice(shared_data, tmp_path):
    from pretrain.config import load_config
    from pretrain.engine.run import run_pretraining
    from pretrain.engine.trainer import NonFiniteLossError

    cfg = load_config(TINY_PRETRAIN[1], TINY_PRETRAIN[2:] + [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "SOLVER.MAX_ITER", "20",
        "SOLVER.OPTIMIZER", "sgd", "SOLVER.BASE_LR", "1e30", "SOLVER.WARMUP_EPOCHS", "0.0",
        "SOLVER.CHECKPOINT_PERIOD", "1", "SOLVER.MAX_NONFINITE_SKIPS", "0",
        "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(NonFiniteLossError) as error:
        run_pretraining(cfg)
    message = str(error.value)
    assert "have already exploded" in message and "Start a new run" in message
    assert "continue with --resume" not in message


# --- slips that end in one line --------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    (["DATA.NUM_WORKERS", "-1"], "DATA.NUM_WORKERS must be 0"),
    (["INPUT.CROP_SCALE", "(1.0, 0.08)"], "INPUT.CROP_SCALE (1.0, 0.08) must be"),
    (["METHOD.PROJECTOR.OUT_DIM", "0"], "METHOD.PROJECTOR.OUT_DIM must be positive"),
])
def test_bad_values_are_named(override, message):
    from pretrain.config import load_config
    from ssl2det.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config("", override)


def test_an_output_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    from ssl2det.errors import ConfigError
    from ssl2det.output_dir import claim_output_dir

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        claim_output_dir(str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="is a file"):
        claim_output_dir(str(tmp_path / "file" / "below"))
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() != 0:  # root may write anywhere
            with pytest.raises(ConfigError, match="cannot be created"):
                claim_output_dir(str(tmp_path / "new"))
    finally:
        os.chmod(tmp_path, 0o700)


def test_the_converter_names_a_bad_output_path(tmp_path):
    from transfer.convert import ConversionError, convert_state_dict, save_detectron2_weights
    import torchvision

    conversion = convert_state_dict(torchvision.models.resnet18().state_dict())
    with pytest.raises(ConversionError, match="is a folder"):
        save_detectron2_weights(conversion, str(tmp_path))
    with pytest.raises(ConversionError, match="does not exist"):
        save_detectron2_weights(conversion, str(tmp_path / "missing" / "r18.pkl"))


def test_the_converter_never_destroys_its_input_or_a_special_file(tmp_path, capsys):
    """`convert in.pth in.pth` would replace the input; as root an output of /dev/null or a pipe
    would be replaced by a regular file: each refused in one line, exit 2, nothing changed. (A
    FIFO and a link to it stand in for a device; a link in a loop or to nothing is a link too,
    not a traceback or "No such file".)"""
    import torchvision

    from transfer.convert import main

    source = tmp_path / "in.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    data = source.read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "link").symlink_to(fifo)
    (tmp_path / "same").symlink_to(source)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for output, message in ((source, "is the input"), (tmp_path / "same", "is the input"),
                            (fifo, "not a regular file"), (tmp_path / "link", "symbolic link"),
                            (tmp_path / "loop", "symbolic link"),
                            (tmp_path / "dangling", "symbolic link")):
        assert main([str(source), str(output)]) == 2
        assert message in capsys.readouterr().err
    assert source.read_bytes() == data and fifo.is_fifo() and (tmp_path / "link").is_symlink()


def test_writes_into_an_unwritable_folder_and_killed_writes_are_one_line_and_cleaned(
        tmp_path, read_only_dir, capsys):
    """The converter into a read-only folder: one line, exit 2. A write killed halfway leaves
    its temporary file; the next write of that path removes it, a live writer's is kept."""
    import socket

    import torchvision

    from ssl2det.io import atomic_write
    from transfer.convert import main

    source = tmp_path / "in.pth"
    torch.save(torchvision.models.resnet18().state_dict(), source)
    assert main([str(source), str(read_only_dir / "out.pkl")]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {read_only_dir / 'out.pkl'}: Read-only file system" in err
    target = tmp_path / "r18.pkl"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".r18.pkl.{socket.gethostname()}.pid{dead.pid}.abc.tmp"
    live = tmp_path / f".r18.pkl.{socket.gethostname()}.pid{os.getpid()}.def.tmp"
    left.write_bytes(b"x" * 1000)
    live.write_bytes(b"x")
    atomic_write(str(target), lambda f: f.write(b"weights"))
    assert not left.exists() and live.exists() and target.read_bytes() == b"weights"


@pytest.mark.slow
def test_output_dirs_on_a_read_only_file_system_are_one_line(read_only_dir, shared_data):
    pretrain = run(PRETRAIN + TINY_PRETRAIN + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                                "OUTPUT_DIR", str(read_only_dir)])
    one_line_error(pretrain, 2, f"OUTPUT_DIR {read_only_dir} cannot be written")
    stage_two = run(TRAIN_NET + VOC_CPU + ["OUTPUT_DIR", str(read_only_dir / "run")])
    one_line_error(stage_two, 2, f"OUTPUT_DIR {read_only_dir / 'run'} cannot be created")


@pytest.mark.parametrize("content, message", [(None, "classes.json not found"),
                                              ("{not json", "cannot be read"),
                                              ('{"a": 1}', "holds dict")])
def test_a_semantic_segmentation_folder_without_its_class_list_is_named(tmp_path, content,
                                                                        message):
    from transfer.data import DatasetRegistrationError
    from transfer.train_net import parse_args, register_datasets

    (tmp_path / "labels").mkdir()
    if content is not None:
        (tmp_path / "labels" / "classes.json").write_text(content)
    args = parse_args(["--register-semseg", "seg", str(tmp_path), str(tmp_path / "labels")])
    with pytest.raises(DatasetRegistrationError, match=message):
        register_datasets(args)


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_a_killed_pipeline_stage_keeps_its_last_lines(shared_data,
                                                                            tmp_path):
    """Ctrl-C (SIGINT) of a pretraining: 'interrupted', exit 130, no traceback. SIGKILL of the
    pipeline during a pretraining stage: the stage (told by SIGTERM, PR_SET_PDEATHSIG) writes a
    checkpoint, and its last lines, 'stopped by SIGTERM' among them, are in its log (the stage
    writes its log itself)."""
    proc = subprocess.Popen(PRETRAIN + TINY_PRETRAIN + [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "SOLVER.MAX_ITER", "100000",
        "OUTPUT_DIR", str(tmp_path / "sigint")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_as_from_a_terminal)
    wait_until(lambda: _logged_a_step(tmp_path / "sigint"), "the first logged step")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "interrupted (Ctrl-C)" in err

    import yaml

    out = tmp_path / "pipeline"
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"output_dir": str(out), "pretrain": [
        {"name": "a", "config": str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"),
         "overrides": TINY_PRETRAIN[2:] + ["DATA.ROOT", str(shared_data / "cifar10-small/test"),
                                           "SOLVER.MAX_ITER", "100000"]}]}))
    pipeline = subprocess.Popen([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _logged_a_step(out / "pretrain/a"), "the stage's first step")
    pipeline.send_signal(signal.SIGKILL)
    pipeline.wait()
    log = out / "pretrain/a/pretrain.log"
    wait_until(lambda: "stopped by SIGTERM" in log.read_text(), "the stage's last line in its log")
    wait_until(lambda: (out / "pretrain/a/last_checkpoint").is_file(), "its checkpoint")


def test_launcher_arguments(capsys, monkeypatch):
    from pretrain.cli import build_parser
    from pretrain.launch import launch_command, main

    with pytest.raises(SystemExit) as exit_:
        main(["c.yaml", "--num-gpus", "abc"])
    assert exit_.value.code == 2 and "invalid int value: 'abc'" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cmd = launch_command("c.yaml", num_gpus=4)
    assert "running 4 CPU processes" in capsys.readouterr().err
    assert cmd[cmd.index("--nproc_per_node") + 1] == "4" and cmd[-2:] == ["MODEL.DEVICE", "cpu"]
    args = build_parser().parse_intermixed_args(["--config-file", "c", "A", "1", "--resume"])
    assert args.resume and args.opts == ["A", "1"]


def test_a_missing_builtin_data_set_names_detectron2_datasets():
    from ssl2det.errors import ConfigError
    from transfer.data import check_datasets

    check_datasets(["coco_2017_val"])  # in ../shared/data/detectron2 (conftest)
    with pytest.raises(ConfigError, match="VOC2007.* does not exist.*DETECTRON2_DATASETS"):
        check_datasets(["voc_2007_trainval"])
    with pytest.raises(ConfigError, match="'nope' is not registered"):
        check_datasets(["nope"])


def test_a_val_root_the_config_names_but_the_user_lacks_turns_the_monitor_off(tmp_path):
    from pretrain.config import load_config, settle_knn_monitor
    from ssl2det.errors import ConfigError

    cfg = load_config(str(REPO / "configs/pretrain/simclr_r50_imagenet.yaml"),
                      ["DATA.ROOT", str(tmp_path)])
    assert not os.path.isdir(cfg.DATA.VAL_ROOT)  # datasets/imagenet/val, the base's default
    assert settle_knn_monitor(cfg, given=["DATA.ROOT"]).KNN.ENABLED is False
    explicit = load_config("", ["DATA.VAL_ROOT", str(tmp_path / "missing")])
    with pytest.raises(ConfigError, match="DATA.VAL_ROOT .*missing is not a folder"):
        settle_knn_monitor(explicit, given=["DATA.VAL_ROOT"])


def test_a_full_disk_during_a_checkpoint_write_leaves_the_old_file_and_one_line(tmp_path):
    from pretrain.engine.checkpoint import AtomicCheckpointer

    model = torch.nn.Linear(300, 300)
    AtomicCheckpointer(model, str(tmp_path)).save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()
    writer = ("import resource, signal, sys, torch\n"
              "from pretrain.engine.checkpoint import AtomicCheckpointer\n"
              "from ssl2det.errors import UserError\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # a disk that is full\n"
              "try:\n"
              f"    AtomicCheckpointer(torch.nn.Linear(300, 300), {str(tmp_path)!r}).save("
              "'model_0000001', iteration=2)\n"
              "except UserError as e:\n"
              "    print(f'error: {e}', file=sys.stderr); sys.exit(1)\n")
    result = run([sys.executable, "-c", writer], cwd=REPO)
    one_line_error(result, 1, "cannot write", "model_0000001.pth", "Nothing partial was left")
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_checkpoints_get_the_mode_a_plain_open_would(tmp_path):
    from ssl2det.io import atomic_write

    atomic_write(str(tmp_path / "f"), lambda f: f.write(b"x"))
    (tmp_path / "g").write_bytes(b"x")
    assert (tmp_path / "f").stat().st_mode == (tmp_path / "g").stat().st_mode


def test_sixteen_bit_grayscale_is_scaled_not_saturated(tmp_path):
    from ssl2det.images import decode_rgb

    path = tmp_path / "gray16.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    assert np.asarray(decode_rgb(str(path)))[0, 0].tolist() == [128, 128, 128]


def test_a_symlink_loop_is_followed_once_and_an_empty_class_is_named(shared_data, tmp_path):
    """A link back to its own class folder is read once; a link into the root or another class
    is refused by name (the other class's images were read again under a second label)."""
    from pretrain.data import ImageFiles
    from ssl2det.errors import DatasetError

    root = tmp_path / "images"
    (root / "cat").mkdir(parents=True)
    jpg = sorted((shared_data / "cifar10-small/test").glob("*/*.jpg"))[0].read_bytes()
    (root / "cat" / "a.jpg").write_bytes(jpg)
    (root / "cat" / "loop").symlink_to(root / "cat")
    assert len(ImageFiles(str(root))) == 1
    (root / "dog").mkdir()
    with pytest.raises(DatasetError, match="class folders dog hold no image"):
        ImageFiles(str(root))
    # a link into the root or into another class: that class's images under a second label
    (root / "dog" / "b.jpg").write_bytes(jpg)
    for target, into in ((root, "the image root"), (root / "dog", "class dog's folder")):
        (root / "cat" / "up").symlink_to(target)
        with pytest.raises(DatasetError, match=f"cat/up leads into {into}"):
            ImageFiles(str(root))
        (root / "cat" / "up").unlink()
    assert len(ImageFiles(str(root))) == 2
