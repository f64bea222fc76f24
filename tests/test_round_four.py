"""Round four's refusals, in-process: what the run file's schema, the YAML reader, the configs'
own checks and the pre-flight refuse, each by name (the one-subprocess "no traceback" contract
of each command line is in test_misuse.py and test_run_file.py)."""

import json

import pytest
import torch
import torchvision
import yaml

from tiny_pipeline import DATA, mini_voc

DEMO_PRETRAIN = "configs/demo/simclr_r50_small.yaml"
DEMO_TRANSFER = "configs/demo/voc_raccoon_faster_rcnn.yaml"


def _problems(tmp_path, spec, text=None) -> str:
    from transfer.run_file import RunFileError
    from transfer.spec import load_spec

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
            "transfer": [{"name": "t", "config": DEMO_TRANSFER,
                          "overrides": ["SEED", 3, "MODEL.WEIGHTS", "w.pkl"]}]}
    problems = _problems(tmp_path, spec)
    assert "SOLVER.MAX_ITER given twice in one overrides list" in problems
    assert "OUTPUT_DIR is set by the pipeline (output_dir and the entry's name)" in problems
    assert "SEED is set by the pipeline (repeats:" in problems


def test_sbatch_options_cannot_override_the_launch_block_or_break_the_script(tmp_path):
    spec = {"output_dir": str(tmp_path / "out"), "launch": {"executor": "slurm", "sbatch": {
        "partition": "gpu", "time": "1:00:00", "mem": "10G", "comment": "a\n#SBATCH --qos=high",
        "constraint": "a100", "exclusive": True}}}
    problems = _problems(tmp_path, spec)
    assert "partition is set by the launch block: use launch.partition" in problems
    assert "time is set by the launch block: use launch.KIND.time" in problems
    assert "mem is set by the launch block: use launch.KIND.mem_gb" in problems
    assert "comment: 'a\\n#SBATCH --qos=high' would break the job script" in problems
    assert "constraint" not in problems and "exclusive" not in problems
    # one line per user key, never pydantic's union tags as if they were keys
    spec["launch"]["sbatch"] = {"nodelist": [1, 2]}
    problems = _problems(tmp_path, spec)
    assert ("launch.sbatch.nodelist: should be a string or an integer or true/false, got [1, 2]"
            in problems) and ".str" not in problems and ".bool" not in problems


def test_a_key_given_twice_in_the_run_file_is_refused_with_both_lines(tmp_path):
    from ssl2det.errors import ConfigError
    from transfer.spec import load_spec

    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'a'}\npretrain: []\noutput_dir: {tmp_path / 'b'}\n")
    with pytest.raises(ConfigError, match="the key 'output_dir' is given twice, on lines 1 and 3"):
        load_spec(str(path))


@pytest.mark.parametrize("value, minutes", [
    ("30", 30), ("30:15", 31), ("2:00:00", 120), ("1-02", 26 * 60), ("1-02:00", 26 * 60),
    ("1-02:03", 26 * 60 + 3), ("1-02:03:04", 26 * 60 + 4)])
def test_time_limits_read_as_slurm_reads_them(value, minutes):
    from transfer.run_file import walltime_minutes

    assert walltime_minutes(value) == minutes


def _preflight_problems(tmp_path, spec) -> str:
    from transfer.pipeline import build_stages
    from transfer.preflight import PreflightError, preflight
    from transfer.spec import load_spec

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
            "transfer": [{"name": "t", "config": DEMO_TRANSFER, "backbones": ["random"],
                          "overrides": ["DATASETS.TRAIN", '("mini_train",)']},
                         {"name": "v", "config": DEMO_TRANSFER, "backbones": ["random"],
                          "overrides": ["SOLVER.MAX_ITER", 0]},
                         {"name": "u", "config": DEMO_TRANSFER, "backbones": ["random"],
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
            "transfer": [{"name": "t", "config": DEMO_TRANSFER, "backbones": ["nan", "folder"],
                          "overrides": ["DATASETS.TRAIN", '("coco_2017_val",)']}]}
    problems = _preflight_problems(tmp_path, spec)
    assert "layer3.1.conv2.weight holds 1 NaN or infinite value(s)" in problems
    assert f"weights file {tmp_path / 'folder.pth'} is a folder" in problems


def test_periodic_checkpoints_are_pruned_to_the_newest_few_never_the_one_to_resume(tmp_path):
    from ssl2det.checkpoint import prune_periodic_checkpoints

    for i in (1, 3, 5, 7, 9):
        (tmp_path / f"model_{i:07d}.pth").write_bytes(b"x")
    (tmp_path / "model_final.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")  # (a resume chose an old one)
    removed = prune_periodic_checkpoints(str(tmp_path), keep=2)
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == ["model_0000003.pth", "model_0000005.pth"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000001.pth", "model_0000007.pth", "model_0000009.pth", "model_final.pth"]
    assert prune_periodic_checkpoints(str(tmp_path), keep=0) == []  # 0 keeps every one


def test_the_disk_estimate_counts_only_the_checkpoints_kept(tmp_path):
    from transfer.pipeline import build_stages, load_spec
    from transfer.preflight import _pretrain_checkpoints

    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"),
        "pretrain": [{"name": "a", "config": DEMO_PRETRAIN, "overrides": [
            "SOLVER.MAX_ITER", 1000, "SOLVER.CHECKPOINT_PERIOD", 10]}]}))
    cfg = build_stages(load_spec(str(tmp_path / "run.yaml")))[0].config
    assert _pretrain_checkpoints(cfg, 10_000) == 3 + 1  # the kept three and the final one
    cfg.defrost()
    cfg.SOLVER.CHECKPOINTS_TO_KEEP = 0
    assert _pretrain_checkpoints(cfg, 10_000) == 100 + 1


def test_split_batch_norm_is_batch_norm_over_each_part_with_the_first_parts_statistics():
    """Against torch's own BatchNorm2d applied to each 32-image part separately (what each of 8
    GPUs computes): the outputs, the gradients, and the running statistics (the first part's)."""
    from torch import nn

    from pretrain.models.split_bn import SplitBatchNorm, split_batch_norm

    torch.manual_seed(0)
    x = torch.randn(128, 6, 5, 5, requires_grad=True)
    model = split_batch_norm(nn.Sequential(nn.BatchNorm2d(6)), groups=4)
    assert isinstance(model[0], SplitBatchNorm)
    reference = nn.BatchNorm2d(6)
    out = model(x)
    expected = torch.cat([nn.BatchNorm2d(6)(part) for part in x.chunk(4)])
    assert torch.allclose(out, expected, atol=1e-5)
    reference(x[:32])
    assert torch.allclose(model[0].running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(model[0].running_var, reference.running_var, atol=1e-6)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    parts = [p.detach().requires_grad_() for p in x.chunk(4)]
    ref_grads = torch.autograd.grad(sum(nn.BatchNorm2d(6)(p).square().sum() for p in parts), parts)
    assert torch.allclose(grad, torch.cat(ref_grads), atol=1e-4)
    # the jigsaw branch's 9 patches an image: parts of the same images' worth
    assert model(torch.randn(128 * 9, 6, 2, 2)).shape[0] == 128 * 9


def test_moco_and_infomin_normalise_over_32_images_on_any_layout():
    from pretrain.config import load_config
    from pretrain.engine.run import batch_norm_ranks, batch_norm_splits

    for name in ("mocov2_r50_imagenet.yaml", "infomin_mocov2_r50_imagenet.yaml"):
        cfg = load_config(f"configs/pretrain/{name}")
        assert cfg.MODEL.BN_GROUP_IMAGES == 32 and cfg.SOLVER.BATCH_SIZE == 256
        assert [batch_norm_splits(cfg, w) for w in (1, 2, 8)] == [8, 4, 1]
        assert [batch_norm_ranks(cfg, w) for w in (1, 2, 8)] == [1, 1, 1]
