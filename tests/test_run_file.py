"""Reliability round three on the pipeline: the run file's schema (every key known, every type
strict, names that are safe folder names), the deep pre-flight (weights opened and matched to the
architecture, VOC image lists, metric names, the output folder), two pipelines on one folder.
Each case is a red-team finding turned into a test: the message names the key path or file,
the exit code is 2, nothing is written or started."""

import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
import torchvision
import yaml

from conftest import REPO

DATA = REPO / "datasets" / "raccoon_small"
PIPELINE = [sys.executable, str(REPO / "tools/pipeline.py")]
DEMO_PRETRAIN = "configs/demo/simclr_r50_small.yaml"
DEMO_TASK = "configs/demo/voc_raccoon_faster_rcnn.yaml"
RACCOON = {"register_voc": [["r_train", str(DATA), "train"], ["r_test", str(DATA), "test"]],
           "voc_classes": "raccoon"}
TASK_DATA = ["DATASETS.TRAIN", '("r_train",)', "DATASETS.TEST", '("r_test",)']


def _write(tmp_path, spec, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def _problems(path) -> str:
    from transfer.run_file import RunFileError
    from transfer.spec import load_spec

    with pytest.raises(RunFileError) as caught:
        load_spec(str(path))
    assert caught.value.exit_code == 2
    return str(caught.value)


def test_misspelt_keys_wrong_types_and_bounds_are_each_named(tmp_path):
    spec = {"output_dir": 5, "repeat": 3,
            "pretrain": [{"name": "a", "config": DEMO_PRETRAIN, "overides": ["X", 1]},
                         {"name": "b", "config": DEMO_PRETRAIN, "repeats": True},
                         {"name": "c", "config": DEMO_PRETRAIN, "repeats": 1000000000,
                          "overrides": "DATA.ROOT x"},
                         {"name": "d", "config": DEMO_PRETRAIN, "overrides": ["ODD"]}],
            "backbones": "supervised",
            "transfer": [{"name": "t", "config": DEMO_TASK, "basline": "random",
                          "metrics": "bbox/AP", "backbone": ["a"],
                          "reference": [{"label": "x", "metric": "bbox/AP", "value": float("nan"),
                                         "source": "s"}]}],
            "datasets": {"register_voc": [["only", "two"]], "datasets": ["a", "b"]},
            "report": {"prediction": 3, "nmae": "x", "predictions": "three"},
            "launch": 8, "probe": {"train_root": "a", "val_root": "b", "linear_epoch": 3}}
    text = _problems(_write(tmp_path, spec))
    for fragment in (
            "output_dir: Input should be a valid string, got 5",
            "repeat: unknown key; did you mean 'repeats'?",
            "pretrain[0].overides: unknown key; did you mean 'overrides'?",
            "pretrain[1].repeats: Input should be a valid integer, got True",
            "pretrain[2].repeats: Input should be less than or equal to 100, got 1000000000",
            "pretrain[2].overrides: Input should be a valid list, got 'DATA.ROOT x'",
            "pretrain[3].overrides: overrides come as KEY, VALUE pairs",
            "backbones: Input should be a valid list, got 'supervised'",
            "transfer[0].basline: unknown key; did you mean 'baseline'?",
            "transfer[0].metrics: unknown key; did you mean 'metric'?",
            "transfer[0].backbone: unknown key; did you mean 'backbones'?",
            "transfer[0].reference[0].value: a number that is finite",
            "datasets.register_voc[0]: a list of three: [NAME, VOC_DIR, SPLIT]",
            "datasets.datasets: unknown key",
            "report.prediction: unknown key; did you mean 'predictions'?",
            "report.nmae: unknown key; did you mean 'name'?",
            "report.predictions: Input should be a valid integer, got 'three'",
            "launch: Input should be a valid dictionary",
            "probe.linear_epoch: unknown key; did you mean 'linear_epochs'?"):
        assert fragment in text, text
    assert str(tmp_path / "run.yaml") in text


@pytest.mark.parametrize("where, name, message", [
    ("pretrain", "../../../../tmp/x", "it names a folder"),
    ("pretrain", "a/b", "it names a folder"),
    ("pretrain", "", "it names a folder"),
    ("pretrain", "random", "'random' is the randomly initialised backbone"),
    ("pretrain", "a-seed1", "must not end in -seedN"),
    ("backbones", "random", "'random' is the randomly initialised backbone"),
    ("transfer", "t/1", "it names a folder"),
    ("report", "../../x", "it names a folder"),
])
def test_names_are_safe_folder_names(tmp_path, where, name, message):
    entry = {"pretrain": {"name": name, "config": DEMO_PRETRAIN},
             "backbones": {"name": name, "weights": "w.pth"},
             "transfer": {"name": name, "config": DEMO_TASK}}
    spec = {"report": {"name": name}} if where == "report" else {where: [entry[where]]}
    text = _problems(_write(tmp_path, spec))
    assert f"{where}{'' if where == 'report' else '[0]'}.name: " in text and message in text


def test_names_used_twice_or_unknown_are_refused(tmp_path):
    spec = {"pretrain": [{"name": "a", "config": DEMO_PRETRAIN, "overrides": ["SOLVER.MAX_ITER", 2]},
                         {"name": "a", "config": DEMO_PRETRAIN, "overrides": ["SOLVER.MAX_ITER", 3]}],
            "backbones": [{"name": "b", "weights": "1.pth"}, {"name": "b", "weights": "2.pth"},
                          {"name": "a", "weights": "3.pth"}],
            "transfer": [{"name": "t", "config": DEMO_TASK, "backbones": ["a", "ghost", "a"],
                          "baseline": "random"},
                         {"name": "t", "config": DEMO_TASK}]}
    text = _problems(_write(tmp_path, spec))
    for fragment in ("pretrain: the name 'a' is used twice", "backbones: the name 'b' is used twice",
                     "backbones: 'a' is also a pretrain entry's name",
                     "transfer: the name 't' is used twice",
                     "transfer[0].backbones: ['ghost'] are neither pretrain nor backbones",
                     "transfer[0].backbones: ['a'] named twice",
                     "transfer[0].baseline: 'random' is not one of the task's backbones"):
        assert fragment in text, text


def test_a_bad_run_file_is_one_list_and_exit_2_from_the_command_line(tmp_path):
    path = _write(tmp_path, {"pretrain": [{"name": "a", "config": DEMO_PRETRAIN,
                                           "overides": ["SOLVER.MAX_ITER", 2]}],
                             "output_dir": str(tmp_path / "out")})
    result = subprocess.run([*PIPELINE, str(path), "--check"], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "pretrain[0].overides: unknown key; did you mean 'overrides'?" in result.stderr
    assert not (tmp_path / "out").exists()


def test_every_shipped_run_file_fits_the_schema_and_its_preflight_names_only_missing_data():
    """No false alarm: the demo's pre-flight passes; the paper-scale files, on a machine without
    their data, report only what lies under /data (folders, weights files)."""
    from transfer.pipeline import build_stages
    from transfer.preflight import PreflightError, preflight
    from transfer.spec import load_spec

    files = sorted((REPO / "configs/pipeline").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        spec = load_spec(str(path))
        try:
            preflight(spec, build_stages(spec))
        except PreflightError as e:
            assert path.name != "demo.yaml", str(e)
            lines = str(e).splitlines()[1:]
            # (and the disk estimate, which is this machine's free space against ~100 GB)
            assert lines and all("/data" in line or line.startswith("  - disk:")
                                 for line in lines), str(e)


def _weights_files(tmp_path) -> dict:
    """The weights a careless or hostile user gives, by what they are."""
    marker = tmp_path / "MARKER"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files = {"empty": b"", "html": b"<html><body>404 Not Found</body></html>"}
    paths = {name: tmp_path / f"{name}.pth" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "whole.pth")
    paths["truncated"] = tmp_path / "truncated.pth"
    paths["truncated"].write_bytes((tmp_path / "whole.pth").read_bytes()[:100_000])
    paths["code"] = tmp_path / "code.pth"
    with open(paths["code"], "wb") as f:
        pickle.dump({"state_dict": RunsCode()}, f)
    paths["module"] = tmp_path / "module.pth"
    torch.save(torchvision.models.resnet18(), paths["module"])
    paths["resnet18"] = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), paths["resnet18"])
    paths["code_pkl"] = tmp_path / "code.pkl"
    with open(paths["code_pkl"], "wb") as f:
        pickle.dump({"model": RunsCode()}, f)
    return marker, paths


def test_the_preflight_opens_what_it_names(tmp_path):
    """Weights that are empty, truncated, an HTML page, code-carrying, a pickled module or a
    ResNet-18 for an R50 config; a CIFAR-stem pretraining feeding detection; a VOC split without
    its image list; a misspelt metric: one list, exit 2, no file run, nothing written."""
    marker, weights = _weights_files(tmp_path)
    voc = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("x\n")
    out = tmp_path / "out"
    spec = {"output_dir": str(out),
            "datasets": {**RACCOON, "register_voc": RACCOON["register_voc"]},
            "pretrain": [{"name": "cifar", "config": "configs/pretrain/infocl_cifar10_simclr.yaml",
                          "overrides": ["DATA.ROOT", str(DATA / "unlabeled"), "DATA.VAL_ROOT", ""]}],
            "backbones": [{"name": name, "weights": str(path)} for name, path in weights.items()],
            "transfer": [{"name": "det", "config": DEMO_TASK, "overrides": TASK_DATA,
                          "metric": "bbox/AP5O",
                          "reference": [{"label": "sup", "metric": "bbox/mAP", "value": 1.0,
                                         "source": "s"}]},
                         {"name": "det_voc", "config": DEMO_TASK, "backbones": ["random"],
                          "overrides": ["DATASETS.TRAIN", '("voc_2007_trainval",)']}]}
    path = _write(tmp_path, spec)
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "d2"))
    (tmp_path / "d2").mkdir()
    (tmp_path / "d2" / "VOC2007").symlink_to(voc)
    result = subprocess.run([*PIPELINE, str(path), "--check"], capture_output=True, text=True,
                            timeout=600, cwd=REPO, env=env)
    err = result.stderr
    assert result.returncode == 2 and "Traceback" not in err, err[-3000:]
    for fragment in (f"{weights['empty']} cannot be loaded", f"{weights['html']} cannot be loaded",
                     f"{weights['truncated']} cannot be loaded", f"{weights['code']} cannot be loaded",
                     f"{weights['module']} cannot be loaded",
                     f"{weights['code_pkl']} is not a weights pickle",
                     "backbone resnet18 is a resnet18, but the task's config builds a resnet50",
                     "pretrain cifar has MODEL.CIFAR_STEM True",
                     "ImageSets/Main/trainval.txt does not exist",
                     "metric names 'bbox/AP5O', which its evaluator does not report; did you "
                     "mean bbox/AP50?", "reference 'sup' names 'bbox/mAP'"):
        assert fragment in err, err[-4000:]
    assert "whole.pth" not in err  # the one good file raises no alarm
    assert not marker.exists() and not out.exists()


def test_an_output_dir_that_is_a_file_or_read_only_is_named_before_anything(tmp_path,
                                                                          read_only_dir):
    from transfer.preflight import output_dir_problem

    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in output_dir_problem(tmp_path / "file")
    assert "lies under the file" in output_dir_problem(tmp_path / "file" / "run")
    assert "cannot be written" in output_dir_problem(read_only_dir / "run")
    assert output_dir_problem(tmp_path / "new" / "run") == ""
    path = _write(tmp_path, {"output_dir": str(read_only_dir / "run"), "pretrain": [
        {"name": "a", "config": DEMO_PRETRAIN, "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]})
    result = subprocess.run([*PIPELINE, str(path)], capture_output=True, text=True, timeout=300,
                            cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"output_dir {read_only_dir / 'run'} cannot be written" in result.stderr


@pytest.mark.slow
def test_a_second_pipeline_on_a_folder_in_use_stops_at_once_leaving_the_first_alone(tmp_path):
    out = tmp_path / "run"
    first = {"output_dir": str(out), "pretrain": [
        {"name": "a", "config": DEMO_PRETRAIN,
         "overrides": ["DATA.ROOT", str(DATA / "unlabeled"), "SOLVER.MAX_ITER", 1000,
                       "SOLVER.BATCH_SIZE", 8, "DATA.NUM_WORKERS", 0, "KNN.ENABLED", False]}]}
    second = {**first, "pretrain": [{**first["pretrain"][0], "overrides": [
        *first["pretrain"][0]["overrides"], "SOLVER.BASE_LR", 0.1]}]}
    proc = subprocess.Popen([*PIPELINE, str(_write(tmp_path, first, "first.yaml"))], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = out / "pretrain/a/log.txt"
        deadline = time.time() + 300
        while not (log.is_file() and "Starting training" in log.read_text()):
            assert proc.poll() is None and time.time() < deadline, "the first pipeline did not start"
            time.sleep(0.2)
        before = sorted(p.name for p in out.rglob("*"))
        result = subprocess.run([*PIPELINE, str(_write(tmp_path, second, "second.yaml"))],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"output_dir {out} is in use by process {proc.pid}" in result.stderr
        after = sorted(p.name for p in out.rglob("*"))
        assert not [name for name in after if ".stale-" in name]  # nothing moved aside
        assert set(before) <= set(after) and proc.poll() is None  # the first runs on
        assert "SOLVER.BASE_LR" not in (out / "pipeline.yaml").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
