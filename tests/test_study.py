"""The objective study (pipeline/study.py, tools/objective_study.py): a pipeline of pretraining
and probe stages over configs and paired seeds, its table, and its timing model."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from helpers import call


def _subset(root, out, train, test):
    """`root`'s first `train` / `test` images of every class, linked under `out`: the study's
    cost is mostly its feature extractions (kNN, probe), which scale with the images."""
    for split, n in (("train", train), ("test", test)):
        for folder in sorted((root / split).iterdir()):
            (out / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:n]:
                (out / split / folder.name / image.name).symlink_to(image)
    return out


@pytest.mark.slow
def test_objective_study_over_seeds_with_the_timing_model(tmp_path):
    """The objective study (tools/objective_study.py) at tiny settings: two configs x two paired
    seeds on a fifth of the shipped CIFAR-10 sample (100 training, 50 test images), the training set
    decoded once on the device, kNN every epoch; the table's mean ± std and paired difference
    are those of the per-seed probe results, and the timing model says how many epochs fit a
    budget."""
    import statistics

    from pipeline.study import main as study_main

    tiny = _subset(REPO / "datasets" / "cifar10_tiny", tmp_path / "cifar", train=10, test=5)
    configs = [str(REPO / f"configs/pretrain/infocl_cifar10_simclr{s}.yaml") for s in ("", "_rc")]
    common = ["--epochs", "1", "--batch-size", "20", "--linear-epochs", "3", "--workers", "0",
              "--train-root", str(tiny / "train"), "--val-root", str(tiny / "test"),
              "--set", "DATA.DECODE_ONCE", "True", "--set", "MODEL.CHANNELS_LAST", "False",
              "--set", "SOLVER.MAX_ITER", "2", *configs]
    # the study's own process is this one (each of its stages is a process of its own)
    first = call(study_main, ["--out", tmp_path / "study", "--seeds", "2", "--knn-every", "1",
                              *common])
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    out = tmp_path / "study"
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"infocl_cifar10_simclr", "infocl_cifar10_simclr_rc", "random"}
    table = (out / "results.md").read_text()
    linear = {}
    for name in ("infocl_cifar10_simclr", "infocl_cifar10_simclr_rc"):
        seeds = results[name]
        assert set(seeds) == {"0", "1"}
        for k, folder in (("0", name), ("1", f"{name}-seed1")):
            curve = seeds[k].pop("knn_curve")
            assert curve and all(0 <= top1 <= 100 for _, top1 in curve)
            assert seeds[k] == json.loads((out / "probe" / folder / "probe.json").read_text())
        linear[name] = [seeds[k]["linear_top1"] for k in ("0", "1")]
        knn = [seeds[k]["knn_top1"] for k in ("0", "1")]
        cell = f"{statistics.mean(knn):.2f} ± {statistics.stdev(knn):.2f}"
        assert f"| {name} | {cell} |" in table
    assert seeds["0"] != seeds["1"]  # the seeds give different encoders
    diffs = [b - a for a, b in zip(linear["infocl_cifar10_simclr"],
                                   linear["infocl_cifar10_simclr_rc"])]
    assert f"{statistics.mean(diffs):+.2f} ± {statistics.stdev(diffs):.2f};" in table
    assert "noise (|mean|" in table

    # the timing model, on the first config alone (its per-config arithmetic is the same)
    # (the entry point as run.sh runs it: its last line is the number, for scripts)
    estimate = subprocess.run(
        [sys.executable, str(REPO / "tools/objective_study.py"), "--out", str(tmp_path / "est"),
         "--seeds", "2", "--estimate", "600", "--estimate-iters", "2", *common[:-1]],
        capture_output=True, text=True, timeout=900)
    assert estimate.returncode == 0, (estimate.stdout + estimate.stderr)[-4000:]
    model = json.loads((tmp_path / "est/estimate.json").read_text())
    assert [r["config"] for r in model["configs"]] == ["infocl_cifar10_simclr"]
    assert model["steps_per_epoch"] == 5 and all(r["epoch_s"] > 0 for r in model["configs"])
    fits = model["epochs_that_fit"]
    assert int(estimate.stdout.split()[-1]) == fits
    runs = len(model["configs"]) * 2  # configs x seeds
    cost = runs * model["fixed_s_per_run"] + 30 + fits * 2 * sum(r["epoch_s"] for r in model["configs"])
    assert cost <= 600 or fits == 0
