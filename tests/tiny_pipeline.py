"""The tiny run file the pipeline tests share (tests/test_pipeline.py runs it on this machine,
tests/test_slurm.py's studies are made from it): pretraining on the shipped
raccoon photos and a torchvision-layout ResNet-50 file as a second backbone, each fine-tuned as
Faster R-CNN C4 with two seeds on an 8-photo VOC split, evaluated on 4."""

import subprocess
import sys

import yaml

from conftest import REPO

DATA = REPO / "datasets" / "raccoon_small"
TINY = REPO / "datasets" / "cifar10_tiny"


def mini_voc(root):
    """The shipped data with a smaller split (8 train / 4 test images), for speed."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).symlink_to(DATA / sub)
    for split, n in (("train", 8), ("test", 4)):
        ids = (DATA / f"ImageSets/Main/{split}.txt").read_text().split()[:n]
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def torchvision_r50(path):
    """A torchvision-layout ResNet-50 state dict, as a user's supervised weights would be."""
    import torch
    import torchvision

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


#: 32 px, NCHW (oneDNN's NHWC is slower at toy sizes): about 0.4 s an iteration here; 24 of
#: them leave tests/test_slurm.py's two-node study seconds to send each signal mid-run, loaded
#: or not (the tiny pipeline sets its own 8)
QUICK_PRETRAIN = ["DATA.ROOT", str(DATA / "unlabeled"), "DATA.VAL_ROOT", str(TINY / "test"),
                  "KNN.TRAIN_ROOT", str(TINY / "train"), "SOLVER.MAX_ITER", "24",
                  "SOLVER.BATCH_SIZE", "8", "SOLVER.CHECKPOINT_PERIOD", "12", "LOG_PERIOD", "1",
                  "DATA.NUM_WORKERS", "0", "INPUT.SIZE", "32", "MODEL.CHANNELS_LAST", "False"]
#: 128 px (the demo's 240): about 2 s less of each fine-tuning and evaluation stage here; C4
#: runs res5 once per box, so 4 sampled boxes an image in training and 10 proposals in testing
#: (16 and 50 in the demo's config: 0.8 s of an evaluation's image, 1.2 s of an iteration)
QUICK_TRANSFER = ["DATASETS.TRAIN", '("mini_train",)', "DATASETS.TEST", '("mini_test",)',
                  "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
                  "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4", "MODEL.RPN.POST_NMS_TOPK_TEST", "10",
                  "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.NUM_ITER", "1",
                  "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "200",
                  "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "200"]


def with_overrides(base: list, *pairs) -> list:
    """`base` KEY VALUE overrides with `pairs` (KEY, VALUE, ...) set: a key already there takes
    the new value in its place (a run file refuses a key given twice)."""
    merged = dict(zip(base[::2], base[1::2]))
    merged.update(zip(pairs[::2], map(str, pairs[1::2])))
    return [item for pair in merged.items() for item in pair]


def tiny_spec(folder, out, launch=None) -> dict:
    """The run file (as data) over the data made in `folder`, writing to `out`."""
    voc = folder / "voc"
    if not voc.exists():
        mini_voc(voc)
    weights = folder / "r50.pth"
    if not weights.exists():
        torchvision_r50(weights)
    spec = {
        "output_dir": str(out),
        "datasets": {"register_voc": [["mini_train", str(voc), "train"],
                                      ["mini_test", str(voc), "test"]],
                     "voc_classes": "raccoon"},
        "pretrain": [{"name": "simclr", "config": "configs/demo/simclr_r50_small.yaml",
                      # (8 iterations here: the SLURM studies set their own, longer)
                      "overrides": with_overrides(QUICK_PRETRAIN, "SOLVER.MAX_ITER", 8,
                                                  "SOLVER.CHECKPOINT_PERIOD", 4)}],
        "backbones": [{"name": "supervised", "weights": str(weights),
                       "label": "torchvision layout", "source": "a file on disk"}],
        "repeats": 2,
        "transfer": [{"name": "det", "config": "configs/demo/voc_raccoon_faster_rcnn.yaml",
                      "overrides": QUICK_TRANSFER,
                      "backbones": ["simclr", "supervised"], "baseline": "supervised",
                      "metric": "bbox/AP50",
                      "reference": [{"label": "supervised R50, VOC07+12", "metric": "bbox/AP50",
                                     "value": 81.3, "source": "MoCo, He et al. 2020"}]}],
        "report": {"predictions": 2},
    }
    if launch:
        spec["launch"] = launch
    return spec


def write_run_file(path, spec):
    path.write_text(yaml.safe_dump(spec))
    return path


def run_pipeline(run_file, *flags, code=0):
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             *flags], capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == code, (result.stdout + result.stderr)[-4000:]
    return result.stdout
