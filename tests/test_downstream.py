"""Classification transfer (pretrain/eval/sets, pretrain/eval/downstream.py): each downstream set
read from its official download layout (made here from real images, the release's label and
split files as the release writes them), the authors' splits, the protocols' pieces against
independent computations, and one line for each kind of bad input."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import downstream_layouts as make
from conftest import REPO
from helpers import call, one_line_error


def _samples(name, root, split, protocol="infocl", classes=3):
    from pretrain.eval.sets import SETS

    return SETS[name].samples(str(root), split, protocol, classes)


@pytest.mark.parametrize("name, build, counts", [
    ("dtd", make.dtd, {"train": 18, "test": 6}),  # InfoCL: train1 + val1
    ("flowers", make.flowers, {"train": 24, "test": 6}),  # 80/20 of 10 a class
    ("cub", make.cub, {"train": 9, "test": 9}),
    ("aircraft", make.aircraft, {"train": 12, "test": 12}),  # trainval / test
    ("gtsrb", make.gtsrb, {"train": 24, "test": 6}),
    ("mnist", make.mnist, {"train": 12, "test": 12}),
    ("fashionmnist", make.mnist, {"train": 12, "test": 12}),
    ("cifar100", make.cifar100, {"train": 12, "test": 12}),
    ("stl10", make.stl10, {"train": 12, "test": 12}),
])
def test_each_set_reads_its_layout_with_infocls_splits(name, build, counts, tmp_path):
    root = build(tmp_path / name)
    for split, n in counts.items():
        samples = _samples(name, root, split)
        assert len(samples) == n, (split, len(samples))
        assert sorted(set(samples.labels)) == [0, 1, 2], (split, samples.labels)
        image = samples.open(0)
        assert image.mode == "RGB" and min(image.size) > 0


def test_the_splits_are_the_authors(tmp_path):
    """Flowers and GTSRB: one RandomState(42) shuffles each class's members in turn, the first
    80% train (vgg_flower.py, traffic_sign.py), Flowers' classes in the order they first appear
    in imagelabels.mat; DTD trains on train1 + val1; CUB's official split; Aircraft's trainval,
    cropped to each image's box."""
    from scipy.io import loadmat

    root = make.flowers(tmp_path / "flowers")
    labels = loadmat(root / "imagelabels.mat")["labels"][0]
    rs, expected = np.random.RandomState(42), []
    for label in dict.fromkeys(labels):  # first appearance: 3, 2, 1 here
        members = [i + 1 for i, v in enumerate(labels) if v == label]
        order = np.arange(len(members))
        rs.shuffle(order)
        expected += [f"image_{members[i]:05d}.jpg" for i in order[:int(0.8 * len(members))]]
    got = _samples("flowers", root, "train")
    assert [p.rsplit("/", 1)[1] for p in got.sources] == expected
    assert got.labels[0] == labels[0] - 1 == 2  # 1-based in the .mat
    root = make.gtsrb(tmp_path / "gtsrb")
    test = _samples("gtsrb", root, "test")
    rs = np.random.RandomState(42)
    expected = []
    for c in range(3):
        files = sorted((root / "Final_Training/Images" / f"{c:05d}").iterdir())
        order = np.arange(len(files))
        rs.shuffle(order)
        expected += [str(files[i]) for i in order[int(0.8 * len(files)):]]
    assert test.sources == expected
    root = make.dtd(tmp_path / "dtd")
    lines = [line for s in ("train1", "val1") for line in (root / "labels" / f"{s}.txt")
             .read_text().split()]
    assert [p.split("images/")[1] for p in _samples("dtd", root, "train").sources] == lines
    root = make.aircraft(tmp_path / "aircraft")
    samples = _samples("aircraft", root, "train")
    assert samples.open(0).size == (27, 24)  # 32 px cropped to (2, 3, 29, 27)
    assert _samples("aircraft", root, "train", "kornblith").open(0).size == (32, 32)
    root = make.cub(tmp_path / "cub")
    train = _samples("cub", root, "train")
    assert all(int(p.rsplit("_", 1)[1][:4]) % 2 == 1 for p in train.sources)  # split column 1


def test_the_many_shot_splits_use_the_sets_own_validation_split_or_hold_one_out(tmp_path):
    flowers = make.flowers(tmp_path / "flowers")
    sizes = {s: len(_samples("flowers", flowers, s, "kornblith")) for s in
             ("train", "val", "trainval", "test")}
    assert sizes == {"train": 12, "val": 9, "trainval": 21, "test": 9}  # setid.mat
    cub = make.cub(tmp_path / "cub")
    train, val = (_samples("cub", cub, s, "kornblith") for s in ("train", "val"))
    trainval = _samples("cub", cub, "trainval", "kornblith")
    assert len(train) + len(val) == len(trainval) == 9 and not set(train.sources) & set(
        val.sources)


def test_infoclss_transform_is_torchvisions_and_its_head_as_wide_as_theirs():
    """Resize((s, s)) + ToTensor + Normalize(the set's statistics), against torchvision's own
    transforms; Aircraft's head has 102 outputs (get_data_nclass) for 100 variants."""
    from PIL import Image
    from torchvision import transforms

    from pretrain.eval.downstream import infocl_size, infocl_transform
    from pretrain.eval.sets import SETS

    image = Image.open(next((make.CIFAR / "bird").iterdir())).convert("RGB").resize((45, 37))
    mean, std = SETS["dtd"].infocl_stats
    theirs = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(),
                                 transforms.Normalize(mean=mean, std=std)])(image)
    assert torch.allclose(infocl_transform(32, mean, std)(image), theirs, atol=1e-6)
    assert SETS["aircraft"].infocl_outputs == 102 and SETS["aircraft"].classes == 100
    assert [infocl_size(s, 32) for s in ("dtd", "cifar100", "stl10")] == [32, 32, 96]
    assert infocl_size("flowers", 64) == 64  # STL-pretrained


def test_the_metrics_against_hand_computation():
    from pretrain.eval.downstream import score

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 0, 1])
    assert score("top1", logits, labels) == 75.0
    assert score("mean_per_class", logits, labels) == pytest.approx(100 * (2 / 3 + 1) / 2)
    # one class, scores ranking hit, miss, hit (a difficult one left out): precision 1, 1/2,
    # 2/3 at recall 1/2, 1/2, 1: the 11-point AP is (6 * 1 + 5 * 2/3) / 11
    scores = torch.tensor([[0.9], [0.8], [0.7], [0.95]])
    truth = torch.tensor([[1], [0], [1], [-1]])
    assert score("map11", scores, truth) == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_the_l2_sweep_fits_what_the_loss_says_and_chooses_on_validation():
    """L-BFGS reaches the minimum of mean cross-entropy + l2/2 |W|^2 (its gradient vanishes);
    the sweep picks the value with the best validation metric."""
    from pretrain.eval.downstream import fit_logistic, kornblith

    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    w, b = fit_logistic(x, y, 0.1, 3)
    w.requires_grad_(True), b.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 0.05 * (w * w).sum()
    grads = torch.autograd.grad(loss, (w, b))
    assert max(g.abs().max().item() for g in grads) < 1e-4
    split = (x[:40], y[:40]), (x[40:], y[40:])
    result = kornblith(*split, (x, y), split[1], "top1", 3)
    assert 1e-6 <= result["l2"] <= 1e5 and result["val_metric"] >= 80
    assert result["top1_best"] is None


@pytest.mark.slow
def test_a_set_and_the_same_images_as_a_folder_give_one_result_through_the_command(tmp_path):
    """tools/linear_eval.py --dataset: DTD's layout and the same images as image folders give
    the same features (kept as .npy) and the same result; the JSON has the keys the pipeline
    reads; a second run reuses the features."""
    dtd = make.dtd(tmp_path / "dtd", per_class=8)
    folder = tmp_path / "folder"
    for split in ("train", "val", "test"):
        for line in (dtd / "labels" / f"{split}1.txt").read_text().split():
            target = folder / split / line
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((dtd / "images" / line).read_bytes())
    common = ["--random-init", "--config-file", REPO / "configs/pretrain/infocl_cifar10_simclr.yaml",
              "--protocol", "kornblith", "--classes", 3, "--size", 32]
    from pretrain.eval.cli import linear_main

    results = {}
    for name, root, dataset in (("dtd", dtd, "dtd"), ("folder", folder, "imagefolder")):
        out = tmp_path / f"{name}.json"
        result = call(linear_main, [*common, "--dataset", dataset, "--data-root", root,
                                    "--output", out, "DATA.NUM_WORKERS", 0])
        assert result.returncode == 0, result.stderr[-3000:]
        results[name] = json.loads(out.read_text())
    assert {"dataset", "protocol", "n_train", "n_test", "n_classes", "top1_last", "top1_best",
            "l2"} <= results["dtd"].keys()
    test_features = sorted((tmp_path / "features").glob("*-test-32px-*.features.npy"))
    assert len(test_features) == 2
    a, b = (np.load(p, allow_pickle=False) for p in test_features)
    assert np.array_equal(a, b)
    assert results["dtd"]["metric_value"] == results["folder"]["metric_value"]
    again = call(linear_main, [*common, "--dataset", "dtd", "--data-root", dtd, "--output",
                               tmp_path / "again.json", "DATA.NUM_WORKERS", 0])
    assert again.returncode == 0 and len(list((tmp_path / "features").glob("*.npy"))) == 16


def _bad_input_cases(tmp_path):
    cases = []
    root = make.dtd(tmp_path / "missing")
    (root / "labels" / "test1.txt").unlink()
    cases.append(("dtd", root, 3, "DTD at", "labels/test1.txt is missing"))
    root = make.dtd(tmp_path / "gone")
    next((root / "images" / "banded").iterdir()).unlink()
    cases.append(("dtd", root, 3, "the split names", "which is not there"))
    root = make.cub(tmp_path / "label")
    (root / "image_class_labels.txt").write_text(
        (root / "image_class_labels.txt").read_text().replace("2 1\n", "2 7\n"))
    cases.append(("cub", root, 3, "a label 6 outside the 3 classes"))
    root = make.flowers(tmp_path / "mat")
    (root / "imagelabels.mat").write_bytes(b"not a MATLAB file at all" * 10)
    cases.append(("flowers", root, 3, "imagelabels.mat is not a MATLAB .mat file"))
    root = make.cifar100(tmp_path / "pickle")
    with open(root / "test", "wb") as f:
        pickle.dump(subprocess.call, f)  # a pickle that would run a program
    cases.append(("cifar100", root, 3, "test is not a CIFAR batch", "subprocess.call"))
    root = make.dtd(tmp_path / "count")
    cases.append(("dtd", root, 0, "3 classes, where DTD has 47", "classes: N"))
    return cases


def test_bad_input_is_one_line_and_nothing_is_written(tmp_path):
    from pretrain.eval.cli import linear_main

    for name, root, classes, *fragments in _bad_input_cases(tmp_path):
        out = tmp_path / f"{root.name}.json"
        result = call(linear_main, ["--random-init", "--config-file",
                                    REPO / "configs/pretrain/infocl_cifar10_simclr.yaml",
                                    "--dataset", name, "--data-root", root, "--classes",
                                    classes, "--output", out, "DATA.NUM_WORKERS", 0])
        one_line_error(result, 1, *fragments)
        assert not out.exists() and not (tmp_path / "features").exists()


def test_the_command_lists_the_sets_with_their_layouts():
    result = subprocess.run([sys.executable, str(REPO / "tools/linear_eval.py"), "--help"],
                            capture_output=True, text=True, cwd=REPO)
    for line in ("dtd           DTD: images/<class>/<image>.jpg",
                 "flowers       Oxford Flowers 102: jpg/image_NNNNN.jpg, imagelabels.mat",
                 "cifar100      CIFAR-100: cifar-100-python"):
        assert line in result.stdout, result.stdout


@pytest.mark.parametrize("name, build, classes, counts", [
    ("food101", make.food101, 3, {"trainval": 18, "test": 6}),
    ("sun397", make.sun397, 3, {"trainval": 12, "test": 12}),
    ("cars", make.cars, 3, {"trainval": 12, "test": 12}),
    ("pets", make.pets, 3, {"trainval": 18, "test": 6}),
    ("caltech101", make.caltech101, 3, {"trainval": 90, "test": 12}),  # 30 a class train
    ("voc2007", make.voc2007, 20, {"train": 10, "val": 10, "trainval": 20, "test": 20}),
    ("cifar10", make.cifar10, 3, {"trainval": 30, "test": 6}),
])
def test_the_many_shot_sets_read_their_layouts(name, build, classes, counts, tmp_path):
    root = build(tmp_path / name)
    for split, n in counts.items():
        samples = _samples(name, root, split, "kornblith", classes)
        assert len(samples) == n, (split, len(samples))
        assert samples.open(len(samples) - 1).mode == "RGB"
    if name == "voc2007":  # multi-label: 1 present, 0 absent, -1 difficult
        labels = np.asarray(_samples(name, root, "test", "kornblith", 20).labels)
        assert labels.shape == (20, 20) and (labels == 1).sum(1).tolist() == [1] * 20
        assert (labels == -1).sum(1).tolist() == [1] * 20


@pytest.mark.slow
def test_a_pipeline_with_classification_ends_in_the_reports_table(tmp_path):
    """classification: in a run file makes one stage per set and backbone replicate (a pretrain
    entry and the random baseline), the pre-flight reads the set's layout first (a bad root
    stops the run before any stage), and the report has the sets x backbones table with n (two
    probe seeds each), the paired difference to the baseline and the published number beside."""
    import yaml

    from tiny_pipeline import QUICK_PRETRAIN, run_pipeline, with_overrides

    dtd = make.dtd(tmp_path / "dtd", per_class=64)  # 144 to train on: one batch of 128
    spec = {"output_dir": str(tmp_path / "run"),
            "pretrain": [{"name": "simclr", "config": "configs/demo/simclr_r50_small.yaml",
                          "overrides": with_overrides(
                              QUICK_PRETRAIN, "SOLVER.MAX_ITER", 2, "KNN.ENABLED", False,
                              "MODEL.ARCH", "resnet18")}],
            "classification": [{"name": "textures", "dataset": "dtd", "root": str(dtd),
                                "classes": 3, "repeats": 2, "backbones": ["simclr", "random"],
                                "baseline": "random", "reference": [
                                    {"label": "SimCLR, CIFAR-10", "metric": "top1_best",
                                     "value": 29.52, "source": "InfoCL (Wang et al. 2022)"}]}]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**spec, "classification": [
        {**spec["classification"][0], "classes": 47}]}))
    refused = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(bad), "--check"],
                             capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "classification textures: DTD at" in refused.stderr
    assert "3 classes, where DTD has 47" in refused.stderr
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(spec))
    out = run_pipeline(run_file)
    started = [line for line in out.splitlines() if "] classify textures from " in line
               and line.endswith(" ...")]
    assert len(started) == 2, out  # simclr, random
    report = (tmp_path / "run/report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| textures (dtd, infocl)")]
    assert len(rows) == 3 and "| simclr | top1: " in rows[0] and "| 2 |" in rows[0]
    assert "within noise" in rows[0] or "beyond noise" in rows[0]
    assert "| SimCLR, CIFAR-10 (published) |  | 29.52 |" in rows[2]
    result = json.loads((tmp_path / "run/classify/textures/simclr/classification.json")
                        .read_text())
    assert result["dataset"] == "dtd" and len(result["repeats"]) == 2


def test_the_run_file_named_after_infocls_transfer_is_that_experiment():
    """configs/pipeline/infocl_cifar10_transfer.yaml: InfoCL's three CIFAR-10 recipes, its nine
    transfer sets by its own protocol, SimCLR the baseline, the table's published numbers as
    docs/reference.md gives them (best test epoch, as the paper reports)."""
    import yaml

    from pretrain.eval.sets import SETS

    spec = yaml.safe_load((REPO / "configs/pipeline/infocl_cifar10_transfer.yaml").read_text())
    assert [p["config"] for p in spec["pretrain"]] == [
        f"configs/pretrain/infocl_cifar10_simclr{s}.yaml" for s in ("", "_rc", "_lbe")]
    entries = spec["classification"]
    assert sorted(e["dataset"] for e in entries) == sorted(
        ["flowers", "dtd", "cub", "aircraft", "gtsrb", "mnist", "fashionmnist", "cifar100",
         "stl10"])
    assert all(e.get("protocol", "infocl") == "infocl" and e["baseline"] == "simclr"
               and SETS[e["dataset"]].infocl_stats for e in entries)
    published = {(e["dataset"], r["label"]): (r["metric"], r["value"]) for e in entries
                 for r in e.get("reference", [])}
    assert published == {("flowers", "SimCLR"): ("top1_best", 42.81),
                         ("flowers", "SimCLR + RC"): ("top1_best", 54.16),
                         ("dtd", "SimCLR"): ("top1_best", 29.52),
                         ("dtd", "SimCLR + LBE"): ("top1_best", 34.52)}
