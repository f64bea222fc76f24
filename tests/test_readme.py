"""The commands the README shows, run as written, with only what this machine lacks swapped in
(the data sets, the number of GPUs) and the budget shrunk: they cannot rot."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

#: What a README command names that is not here, and what stands in for it.
STAND_INS = {"--num-gpus 8": "--num-gpus 1", "/data/imagenet/train": "{shared}/imagenet-sample/train"}
#: Overrides that shrink a command's budget, by tool.
SHRINK = {
    "tools/pretrain.sh": ["INPUT.SIZE", "64", "SOLVER.BATCH_SIZE", "4", "SOLVER.MAX_ITER", "1",
                          "DATA.NUM_WORKERS", "0", "MODEL.CHANNELS_LAST", "False"],
    "tools/train_net.py": ["SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
                           "DATASETS.TEST", '("coco_2017_val",)', "TEST.PRECISE_BN.ENABLED", "False",
                           "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
                           "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
                           "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST",
                           "10", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
                           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4",
                           "TEST.DETECTIONS_PER_IMAGE", "10"],
    "tools/convert_to_d2.py": [],
}


def readme_commands():
    """The shell commands of the README's ```bash blocks, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command and not command.startswith("#"):
                commands.append(" ".join(command.split()))
    return commands


def test_the_readme_shows_the_commands_this_file_runs():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]  # the two commands of a fresh machine
    assert sorted({c.split()[1] if c.startswith(".venv") else c.split()[0] for c in commands[2:]
                   if "pipeline.py" not in c}) == sorted(SHRINK)


@pytest.mark.slow
def test_the_stage_by_stage_commands_run_as_written(shared_data, tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs")
    env = dict(os.environ, PYTHON=sys.executable,
               DETECTRON2_DATASETS=str(shared_data / "detectron2"))
    for command in readme_commands():
        if command.startswith("make") or "pipeline.py" in command:
            continue  # `make` runs the two top-level commands; the pipeline: the next test
        for wanted, here in STAND_INS.items():
            command = command.replace(wanted, here.format(shared=shared_data))
        argv = command.split()
        if argv[0] == ".venv/bin/python":
            argv = [sys.executable, str(REPO / argv[1]), *argv[2:]]
            tool = argv[1].split(str(REPO) + "/")[1]
        else:
            tool, argv = argv[0], [str(REPO / argv[0]), *argv[1:]]
        result = subprocess.run(argv + SHRINK[tool], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=1200)
        assert result.returncode == 0, f"{command}\n{(result.stdout + result.stderr)[-3000:]}"
        if tool == "tools/pretrain.sh":  # the base config's DATA.VAL_ROOT is not here
            assert "the kNN monitor is off" in result.stdout + result.stderr
    assert (tmp_path / "output/transfer/coco_mask_rcnn_c4_2x/final_metrics.json").is_file()


def test_the_paper_scale_run_file_reads_and_every_stage_config_merges():
    """The README's real-scale pipeline needs ImageNet, VOC and COCO: here its run file is read
    and every stage's effective config is built, as the pipeline does before it starts."""
    from pipeline.cli import build_stages, fingerprints, load_spec

    from pipeline.preflight import preflight
    from pipeline.spec import PipelineError

    command = next(c for c in readme_commands() if "pipeline.py" in c)
    spec = load_spec(str(REPO / command.split()[-1]))
    stages = build_stages(spec)
    # 3 pretraining runs, 5 conversions (2 weights files), 3 ImageNet probes; VOC 6 backbones x 5
    # seeds, COCO 5 x 1, segmentation 5 x 3, each fine-tuned and evaluated; the report
    assert len(fingerprints(stages)) == len(stages) == 3 + 5 + 3 + 2 * (6 * 5 + 5 * 1 + 5 * 3) + 1
    # here there is no ImageNet, no weights and no VOC (the COCO sample is in ../shared): the
    # pre-flight lists them, at once
    with pytest.raises(PipelineError) as missing:
        preflight(spec, stages)
    for expected in ("/data/imagenet/train does not exist", "probe train_root: folder /data",
                     "/data/weights/resnet50-0676ba61.pth",
                     "/data/weights/moco_v2_800ep_pretrain.pth.tar", "voc_2007_trainval",
                     "voc_2007_test", "voc_2012_sem_seg_train_aug"):
        assert expected in str(missing.value)


def test_a_small_batch_on_fewer_gpus_than_the_protocol_gets_one_line(tmp_path):
    """What a user with one small GPU types: the protocol's batch 16 of 8 GPUs cannot be
    rescaled from a batch of 2 of theirs."""
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/train_net.py"), "--config-file",
         str(REPO / "configs/coco_mask_rcnn.yaml"), "SOLVER.IMS_PER_BATCH", "2",
         "OUTPUT_DIR", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "SOLVER.IMS_PER_BATCH 2 does not split over the SOLVER.REFERENCE_WORLD_SIZE 8" in \
        result.stderr and "SOLVER.REFERENCE_WORLD_SIZE 0" in result.stderr
