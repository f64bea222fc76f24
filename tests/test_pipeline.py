"""The whole chain, shortened to a few iterations per stage, on the shipped demo data: it runs
end to end, the report has every section, finished stages are skipped on a re-run, and an
interrupted stage resumes. The objective study, a pipeline of pretraining and probe stages."""

import json
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

DATA = REPO / "datasets" / "raccoon_small"


def _mini_voc(root):
    """The shipped data with a smaller split (8 train / 4 test images), for speed."""
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("Annotations", "JPEGImages"):
        (root / sub).symlink_to(DATA / sub)
    for split, n in (("train", 8), ("test", 4)):
        ids = (DATA / f"ImageSets/Main/{split}.txt").read_text().split()[:n]
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def _run(run_file, *flags):
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                             *flags], capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


@pytest.mark.slow
def test_shortened_pipeline_end_to_end_skip_and_resume(tmp_path):
    voc = _mini_voc(tmp_path / "voc")
    out = tmp_path / "run"
    tiny = REPO / "datasets" / "cifar10_tiny"
    quick_pretrain = ["DATA.ROOT", str(DATA / "unlabeled"), "DATA.VAL_ROOT", str(tiny / "test"),
                      "KNN.TRAIN_ROOT", str(tiny / "train"), "SOLVER.MAX_ITER", "2",
                      "SOLVER.BATCH_SIZE", "8", "SOLVER.CHECKPOINT_PERIOD", "1", "LOG_PERIOD", "1",
                      "DATA.NUM_WORKERS", "0"]
    spec = {
        "output_dir": str(out),
        "datasets": {"register_voc": [["mini_train", str(voc), "train"],
                                      ["mini_test", str(voc), "test"]],
                     "voc_classes": "raccoon"},
        "pretrain": [{"name": "simclr", "config": "configs/demo/simclr_r50_small.yaml",
                      "overrides": quick_pretrain},
                     {"name": "simclr_infocl_rc",
                      "config": "configs/demo/infocl_rc_simclr_r50_small.yaml",
                      "overrides": quick_pretrain}],
        "transfer": [{"name": "det", "config": "configs/demo/voc_raccoon_faster_rcnn.yaml",
                      "overrides": ["DATASETS.TRAIN", '("mini_train",)',
                                    "DATASETS.TEST", '("mini_test",)', "SOLVER.MAX_ITER", "2",
                                    "DATALOADER.NUM_WORKERS", "0", "TEST.PRECISE_BN.NUM_ITER", "1"]}],
        "report": {"predictions": 2},
    }
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(spec))

    first = _run(run_file)
    report = (out / "report.md").read_text()
    for section in ("## Results", "## The run", "## Pretraining", "## Fine-tuning",
                    "## Predictions"):
        assert section in report
    for backbone in ("random", "simclr", "simclr_infocl_rc"):
        assert f"| det | {backbone} |" in report and f"| det | {backbone} |" in first
        assert len(list((out / f"evaluate/det/{backbone}/predictions").glob("*.png"))) == 2
    assert "bbox/AP50" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 + 6  # 3 curves + 6 predictions, embedded
    assert "kNN top-1" in report

    second = _run(run_file)
    assert second.count("complete, skipped") == 2 + 2 + 3 + 3
    assert "..." not in second.replace("[pipeline 11/11] report", "")

    # Interrupt the pretraining of 'simclr' after its first iteration (what a kill right after
    # that checkpoint leaves) and lose one evaluation: exactly those stages run again.
    run = out / "pretrain" / "simclr"
    (run / "model_final.pth").unlink()
    (run / "model_0000001.pth").unlink()
    (run / "last_checkpoint").write_text("model_0000000.pth")
    (out / "evaluate/det/simclr/final_metrics.json").unlink()
    third = _run(run_file)
    assert "pretrain simclr ..." in third and "continuing at iteration 1" in third
    assert "evaluate det from simclr ..." in third
    assert third.count("complete, skipped") == 2 + 2 + 3 + 3 - 2
    assert (run / "model_final.pth").is_file()

    # The run file changes under finished stages (here what the evaluation draws): they are
    # stale. Kept with --keep-stale, and the report says so; redone without it, the outputs of
    # the old inputs moved aside.
    spec["report"]["predictions"] = 1
    run_file.write_text(yaml.safe_dump(spec))
    kept = _run(run_file, "--keep-stale")
    assert kept.count("STALE (its inputs changed since it ran)") == 3
    assert "..." not in kept.replace("[pipeline 11/11] report", "")
    assert "| det | simclr (STALE) |" in (out / "report.md").read_text()
    redone = _run(run_file)
    assert redone.count("its inputs changed since its outputs were made") == 3
    assert redone.count("complete, skipped") == 2 + 2 + 3
    for backbone in ("random", "simclr", "simclr_infocl_rc"):
        assert len(list((out / f"evaluate/det/{backbone}/predictions").glob("*.png"))) == 1
        assert list((out / "evaluate/det").glob(f"{backbone}.stale-*/final_metrics.json"))
    assert "STALE" not in (out / "report.md").read_text()


def test_a_stage_is_stale_exactly_when_what_it_is_made_from_changed(tmp_path):
    """The pipeline's records: a pretraining override that changes the results reaches every
    stage built on that run, and only those; one that changes only how it runs (workers,
    checkpoint period) reaches none."""
    from transfer.pipeline import build_stages, fingerprints, load_spec

    def hashes(overrides):
        spec = {"output_dir": str(tmp_path / "run"),
                "pretrain": [{"name": name, "config": "configs/demo/simclr_r50_small.yaml",
                              "overrides": overrides if name == "a" else []}
                             for name in ("a", "b")],
                "probe": {"train_root": "x", "val_root": "y"},
                "transfer": [{"name": "det", "config": "configs/demo/voc_raccoon_faster_rcnn.yaml"}]}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
        return fingerprints(build_stages(load_spec(str(tmp_path / "run.yaml"))))

    before = hashes([])
    changed = {key for key, h in hashes(["SOLVER.MAX_ITER", "3"]).items() if h != before[key]}
    assert changed == {("pretrain", "a"), ("convert", "a"), ("probe", "a"),
                       ("finetune", "det", "a"), ("evaluate", "det", "a")}
    assert hashes(["DATA.NUM_WORKERS", "1", "SOLVER.CHECKPOINT_PERIOD", "7"]) == before


@pytest.mark.slow
def test_objective_study_is_a_pipeline_of_pretraining_and_probe_stages(tmp_path):
    """tools/objective_study.py on the shipped CIFAR-10 sample: one pretraining run and the
    random baseline, each probed (kNN + linear); the table holds what the probe stages wrote,
    and a re-run skips every stage."""
    tiny = REPO / "datasets" / "cifar10_tiny"
    cmd = [sys.executable, str(REPO / "tools/objective_study.py"), "--out", str(tmp_path),
           "--epochs", "1", "--batch-size", "64", "--linear-epochs", "3", "--workers", "0",
           "--train-root", str(tiny / "train"), "--val-root", str(tiny / "test"),
           str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"infocl_cifar10_simclr", "random"}
    table = (tmp_path / "results.md").read_text()
    for name, result in results.items():
        assert result == json.loads((tmp_path / "probe" / name / "probe.json").read_text())
        assert 0 <= result["knn_top1"] <= 100 and 0 <= result["linear_top1"] <= 100
        assert f"| {name} | {result['knn_top1']:.2f} | {result['linear_top1']:.2f} |" in table
    assert (tmp_path / "pretrain/infocl_cifar10_simclr/model_final.pth").is_file()
    assert "## Results" in (tmp_path / "report.md").read_text()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0 and second.stdout.count("complete, skipped") == 3
