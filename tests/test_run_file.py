"""Reliability round three on the pipeline: the run file's schema (every key known, every type
strict, names that are safe folder names), the deep pre-flight (weights opened and matched to the
architecture, VOC image lists, metric names, the output folder), two pipelines on one folder.
Each case is a red-team finding turned into a test: the message names the key path or file,
the exit code is 2, nothing is written or started."""

import json
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
from tiny_pipeline import mini_voc

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
    from pipeline.run_file import RunFileError
    from pipeline.spec import load_spec

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
    from pipeline.cli import build_stages
    from pipeline.preflight import PreflightError, preflight
    from pipeline.spec import load_spec

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
    from pipeline.preflight import output_dir_problem

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


def test_each_executor_checks_its_own_block_and_old_launch_keys_name_their_new_place(tmp_path):
    """launch.NAME is the settings model the executor NAME registered; the executor's name is
    checked against the registry; keys that an executor's block holds now get one line each."""
    problems = _problems(_write(tmp_path, {"launch": {
        "executor": "kubernetes", "num_gpus": 8, "partition": "gpu",
        "slurm": {"partiton": "gpu"}, "local": {"num_gpus": -1}}}))
    assert "launch.executor: not an executor here (known: local, slurm)" in problems
    assert ("launch.num_gpus: each executor's settings are in its own block now: write launch: "
            "{local: {num_gpus: ...}} (launch.local.num_gpus)") in problems
    assert "launch.partition: each executor's settings are in its own block now" in problems
    assert "launch.slurm.partiton: unknown key; did you mean 'partition'?" in problems
    assert "launch.local.num_gpus: Input should be greater than or equal to 0" in problems
    assert problems.count("\n  - ") == 5


def test_a_new_executor_registers_its_settings_without_touching_the_schema(tmp_path):
    from pydantic import StrictStr

    from pipeline.executors import EXECUTORS, Executor
    from pipeline.run_file import EXECUTOR_SETTINGS, Entry
    from pipeline.spec import load_spec

    class KubeSettings(Entry):
        namespace: StrictStr = "default"

    class KubeExecutor(Executor):
        name, settings_model = "kube", KubeSettings

    try:
        spec = load_spec(str(_write(tmp_path, {"launch": {"executor": "kube",
                                                          "kube": {"namespace": "ml"}}})))
        assert KubeExecutor(spec.launch, tmp_path).settings.namespace == "ml"
        assert spec.launch.settings("slurm").partition == ""  # defaults where the file has none
    finally:
        EXECUTORS.pop("kube"), EXECUTOR_SETTINGS.pop("kube")


# --- the schema's refusals and the deep pre-flight, in-process ----------------------------------

def _problems_of(tmp_path, spec, text=None) -> str:
    """The run file's problems as load_spec raises them (`text`: the file as written)."""
    from pipeline.run_file import RunFileError
    from pipeline.spec import load_spec

    path = tmp_path / "run.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(spec))
    with pytest.raises(RunFileError) as caught:
        load_spec(str(path))
    return str(caught.value)


def test_overrides_of_keys_the_pipeline_sets_and_keys_given_twice_are_refused(tmp_path):
    spec = {"output_dir": str(tmp_path / "out"),
            "pretrain": [{"name": "a", "config": DEMO_PRETRAIN,
                          "overrides": ["SOLVER.MAX_ITER", 2, "SOLVER.MAX_ITER", 20000]},
                         {"name": "b", "config": DEMO_PRETRAIN, "overrides": ["OUTPUT_DIR", "x"]}],
            "transfer": [{"name": "t", "config": DEMO_TASK,
                          "overrides": ["SEED", 3, "MODEL.WEIGHTS", "w.pkl"]}]}
    problems = _problems_of(tmp_path, spec)
    assert "SOLVER.MAX_ITER given twice in one overrides list" in problems
    assert "OUTPUT_DIR is set by the pipeline (output_dir and the entry's name)" in problems
    assert "SEED is set by the pipeline (repeats:" in problems


def test_sbatch_options_cannot_override_the_launch_block_or_break_the_script(tmp_path):
    spec = {"output_dir": str(tmp_path / "out"), "launch": {"executor": "slurm", "slurm": {
        "sbatch": {"partition": "gpu", "time": "1:00:00", "mem": "10G",
                   "comment": "a\n#SBATCH --qos=high", "constraint": "a100",
                   "exclusive": True}}}}
    problems = _problems_of(tmp_path, spec)
    assert "partition is set by the launch block: use launch.slurm.partition" in problems
    assert "time is set by the launch block: use launch.KIND.time" in problems
    assert "mem is set by the launch block: use launch.KIND.mem_gb" in problems
    assert "comment: 'a\\n#SBATCH --qos=high' would break the job script" in problems
    assert "constraint" not in problems and "exclusive" not in problems
    # one line per user key, never pydantic's union tags as if they were keys
    spec["launch"]["slurm"]["sbatch"] = {"nodelist": [1, 2]}
    problems = _problems_of(tmp_path, spec)
    assert ("launch.slurm.sbatch.nodelist: should be a string or an integer or true/false, got "
            "[1, 2]"
            in problems) and ".str" not in problems and ".bool" not in problems


def test_a_key_given_twice_in_the_run_file_is_refused_with_both_lines(tmp_path):
    from ssl2det.errors import ConfigError
    from pipeline.spec import load_spec

    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'a'}\npretrain: []\noutput_dir: {tmp_path / 'b'}\n")
    with pytest.raises(ConfigError, match="the key 'output_dir' is given twice, on lines 1 and 3"):
        load_spec(str(path))


@pytest.mark.parametrize("value, minutes", [
    ("30", 30), ("30:15", 31), ("2:00:00", 120), ("1-02", 26 * 60), ("1-02:00", 26 * 60),
    ("1-02:03", 26 * 60 + 3), ("1-02:03:04", 26 * 60 + 4)])
def test_time_limits_read_as_slurm_reads_them(value, minutes):
    from pipeline.run_file import walltime_minutes

    assert walltime_minutes(value) == minutes


def _preflight_problems(tmp_path, spec) -> str:
    from pipeline.cli import build_stages
    from pipeline.preflight import PreflightError, preflight
    from pipeline.spec import load_spec

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), **spec}))
    loaded = load_spec(str(path))
    with pytest.raises(PreflightError) as caught:
        preflight(loaded, build_stages(loaded))
    return str(caught.value)


def test_the_preflight_reads_configs_and_annotations_as_the_stages_will(tmp_path):
    """Budgets no stage can run, classes the annotations do not have, a split naming a missing
    annotation, a COCO file cut short: each named in the one list, before any stage starts."""
    voc = mini_voc(tmp_path / "voc")
    broken = tmp_path / "broken_voc"
    (broken / "ImageSets/Main").mkdir(parents=True)
    (broken / "Annotations").mkdir()
    (broken / "JPEGImages").symlink_to(DATA / "JPEGImages")
    (broken / "ImageSets/Main/train.txt").write_text("no_such_id\n")
    coco = tmp_path / "cut.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": []})[:-7])
    spec = {"datasets": {"register_voc": [["mini_train", str(voc), "train"],
                                          ["broken_train", str(broken), "train"]],
                         "register_coco": [["cut_coco", str(coco), str(DATA / "JPEGImages")]],
                         "voc_classes": "dog"},
            "pretrain": [{"name": "a", "config": DEMO_PRETRAIN,
                          "overrides": ["DATA.ROOT", str(DATA / "unlabeled"), "DATA.VAL_ROOT",
                                        str(DATA / "unlabeled"), "KNN.PERIOD_EPOCHS", 0]},
                         {"name": "b", "config": DEMO_PRETRAIN,
                          "overrides": ["DATA.ROOT", str(DATA / "unlabeled"), "SOLVER.MAX_ITER",
                                        -5]}],
            "transfer": [{"name": "t", "config": DEMO_TASK, "backbones": ["random"],
                          "overrides": ["DATASETS.TRAIN", '("mini_train",)']},
                         {"name": "v", "config": DEMO_TASK, "backbones": ["random"],
                          "overrides": ["SOLVER.MAX_ITER", 0]},
                         {"name": "u", "config": DEMO_TASK, "backbones": ["random"],
                          "overrides": ["DATASETS.TRAIN", '("broken_train",)',
                                        "DATASETS.TEST", '("cut_coco",)']}]}
    problems = _preflight_problems(tmp_path, spec)
    assert "KNN.PERIOD_EPOCHS must be 1 or more" in problems
    assert "SOLVER.MAX_ITER must be positive, or 0 to run SOLVER.EPOCHS; got -5" in problems
    assert "SOLVER.MAX_ITER must be 1 or more, got 0" in problems
    assert "data set mini_train: its annotations name classes that are not among its classes " \
           "(dog): 'raccoon'" in problems
    assert f"names no_such_id, but {broken / 'Annotations/no_such_id.xml'} does not exist" in problems
    assert f"data set cut_coco: {coco} is not a whole JSON object (cut short" in problems


def test_weights_with_nan_are_refused_by_the_preflight_and_the_converter(tmp_path):
    from transfer.convert import ConversionError, convert_checkpoint

    state = torchvision.models.resnet50().state_dict()
    state["layer3.1.conv2.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ConversionError, match="layer3.1.conv2.weight holds 1 NaN or infinite"):
        convert_checkpoint(str(tmp_path / "nan.pth"))
    (tmp_path / "folder.pth").mkdir()
    spec = {"backbones": [{"name": "nan", "weights": str(tmp_path / "nan.pth")},
                          {"name": "folder", "weights": str(tmp_path / "folder.pth")}],
            "transfer": [{"name": "t", "config": DEMO_TASK, "backbones": ["nan", "folder"],
                          "overrides": ["DATASETS.TRAIN", '("coco_2017_val",)']}]}
    problems = _preflight_problems(tmp_path, spec)
    assert "layer3.1.conv2.weight holds 1 NaN or infinite value(s)" in problems
    assert f"weights file {tmp_path / 'folder.pth'} is a folder" in problems


def test_the_disk_estimate_counts_only_the_checkpoints_kept(tmp_path):
    from pipeline.checks import CHECKPOINT_BYTES_PER_PARAMETER, PARAMETERS, Checks
    from pipeline.cli import build_stages, load_spec

    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"),
        "pretrain": [{"name": "a", "config": DEMO_PRETRAIN, "overrides": [
            "SOLVER.MAX_ITER", 1000, "SOLVER.CHECKPOINT_PERIOD", 10]}]}))
    stage = build_stages(load_spec(str(tmp_path / "run.yaml")))[0]
    checks = Checks(spec=None)
    checks.images[stage.config.DATA.ROOT] = 10_000
    one = PARAMETERS["resnet50"] * CHECKPOINT_BYTES_PER_PARAMETER
    assert stage.checkpoint_bytes(checks) == (3 + 1) * one  # the kept three and the final one
    stage.config.defrost()
    stage.config.SOLVER.CHECKPOINTS_TO_KEEP = 0
    assert stage.checkpoint_bytes(checks) == (100 + 1) * one



def test_a_run_file_that_would_hang_the_preflight_is_refused_in_one_line(tmp_path):
    """An alias bomb (a few nested aliases naming billions of values: the pre-flight walked
    them for minutes without a word) and a FIFO (read twice, or waited on for ever)."""
    import os

    from ssl2det.errors import ConfigError
    from pipeline.spec import load_spec

    bomb = tmp_path / "bomb.yaml"
    levels = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    bomb.write_text(f"output_dir: {tmp_path / 'out'}\nreport:\n  name: r\n" + "\n".join(levels))
    with pytest.raises(ConfigError, match=r"line 5: an alias \(\*a\) of an anchor"):
        load_spec(str(bomb))
    fifo = tmp_path / "run.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_spec(str(fifo))


def test_memory_is_bounded_so_no_request_means_the_whole_node(tmp_path):
    """mem_gb 0.0005 was sent as --mem=0M (SLURM: all of the node's memory) and .inf accepted."""
    for value, message in ((0.0005, "greater than or equal to 0.001"),
                           (float("inf"), "less than or equal to 65536")):
        problems = _problems(_write(tmp_path, {"launch": {"pretrain": {"mem_gb": value}}}))
        assert f"launch.pretrain.mem_gb: Input should be {message}" in problems, problems


def test_paths_the_system_refuses_are_one_line_naming_them(tmp_path):
    """A 300-character output_dir gave a traceback in --check, --status and the run; --status
    with output_dir a file blamed a damaged record."""
    from helpers import one_line_error

    long_dir = tmp_path / ("x" * 300)
    run_file = _write(tmp_path, {"output_dir": str(long_dir), "pretrain": [
        {"name": "a", "config": DEMO_PRETRAIN}]})
    for flags in (["--status"], ["--check"], []):
        result = subprocess.run([*PIPELINE, str(run_file), *flags], capture_output=True,
                                text=True, cwd=REPO)
        one_line_error(result, 2, "x" * 250, "File name too long")
    (tmp_path / "afile").write_text("x")
    run_file = _write(tmp_path, {"output_dir": str(tmp_path / "afile"), "pretrain": [
        {"name": "a", "config": DEMO_PRETRAIN}]}, "file.yaml")
    result = subprocess.run([*PIPELINE, str(run_file), "--status"], capture_output=True,
                            text=True, cwd=REPO)
    one_line_error(result, 2, "afile is a file, not a run's folder")
    assert "damaged record" not in result.stderr
