"""The whole chain, shortened to a few iterations per stage, on the shipped demo data: it runs
end to end, the report has every section, finished stages are skipped on a re-run, and an
interrupted stage resumes (the objective study's pipeline: tests/test_study.py)."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from tiny_pipeline import DATA
from tiny_pipeline import run_pipeline as _run


@pytest.mark.slow
def test_shortened_pipeline_end_to_end_seeds_external_weights_skip_and_resume(tiny_local_run):
    """Pretraining and a torchvision checkpoint file as a second backbone, each fine-tuned with
    two seeds (tests/tiny_pipeline.py): the report's mean ± std are those of the per-seed
    final_metrics.json, the published number sits beside them, every section is there; a
    killed seed resumes while every finished stage is skipped, changed inputs make stages
    stale. (The random backbone runs in the demo and the other pipeline tests.)"""
    import statistics

    from pipeline.spec import load_spec
    from pipeline.stages import build_stages

    out, run_file, first = tiny_local_run
    spec = yaml.safe_load(run_file.read_text())
    assert "pre-flight: 12 stages, every input found" in first  # 11 and the report
    report = (out / "report.md").read_text()
    for section in ("## Results", "## What ran", "## Pretraining", "## Fine-tuning",
                    "## Predictions"):
        assert section in report
    rows = {line.split(" | ")[1]: line for line in report.splitlines()  # the results table
            if line.startswith("| det |") and ("measured |" in line or "(published)" in line)}
    for backbone, label in (("simclr", "simclr"), ("supervised", "supervised (torchvision layout)")):
        ap50 = [json.loads((out / f"evaluate/det/{run}/final_metrics.json").read_text())
                ["bbox"]["AP50"] for run in (backbone, f"{backbone}-seed1")]
        cell = f"{statistics.mean(ap50):.2f} ± {statistics.stdev(ap50):.2f}"
        assert cell in rows[label] and "| 2 | 4 | measured |" in rows[label], rows[label]
        losses = [[r["total_loss"] for r in map(json.loads, (out / f"finetune/det/{run}/metrics.json")
                                                .read_text().splitlines()) if "total_loss" in r]
                  for run in (backbone, f"{backbone}-seed1")]
        assert losses[0] != losses[1]  # two seeds, two different fine-tunings
        assert len(list((out / f"evaluate/det/{backbone}/predictions").glob("*.png"))) == 2
    assert "| 81.30 |" in rows["supervised R50, VOC07+12 (published)"]
    assert "MoCo, He et al. 2020" in rows["supervised R50, VOC07+12 (published)"]
    assert "| det | simclr | supervised (torchvision layout) | bbox/AP50 |" in report
    assert "noise" in report
    # what each stage computed in, read from its records (tests/test_precision.py: the choice)
    what_ran = report.split("## What ran")[1]
    assert what_ran.count("float32 (cpu ") + what_ran.count("bfloat16 autocast (cpu ") >= 1 + 4
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 + 4  # 3 curves + chart, 4 predictions
    # Interrupt the fine-tuning of seed 1 from simclr after its first iteration (what a kill
    # right after that checkpoint leaves) and lose its evaluation: exactly those stages run.
    seed = out / "finetune/det/simclr-seed1"
    (seed / "model_final.pth").unlink()
    (seed / "last_checkpoint").write_text("model_0000000.pth")
    (out / "evaluate/det/simclr-seed1/final_metrics.json").unlink()
    third = _run(run_file)
    assert "fine-tune det from simclr-seed1 ..." in third
    assert "evaluate det from simclr-seed1 ..." in third
    # and nothing else ran but the report, which follows what ran
    assert third.count("complete, skipped") == 12 - 3 and "] report ..." in third
    assert "Loading checkpoint from" in (seed / "finetune.log").read_text().split("model_0000000")[0][-300:] \
        or "model_0000000.pth" in (seed / "finetune.log").read_text()
    assert (seed / "model_final.pth").is_file()

    # The run file changes under finished stages (here what the evaluation draws): they are
    # stale. Kept with --keep-stale, and the report says so; redone without it, the outputs of
    # the old inputs moved aside.
    spec["report"]["predictions"] = 1
    run_file.write_text(yaml.safe_dump(spec))
    kept = _run(run_file, "--keep-stale")
    assert kept.count("STALE (its inputs changed since it ran)") == 4
    assert "| det | simclr (STALE) |" in (out / "report.md").read_text()
    # Without it they would be redone (the 4 evaluations, then the report; the rest skipped),
    # each after moving its old outputs aside: what --dry-run says, with nothing moved yet, and
    # what one evaluation's set-aside does. (Running stages the plan chose is the first run's;
    # the plan's decisions are tests/test_plan.py's.)
    planned = _run(run_file, "--dry-run")
    assert planned.count("would be moved") == 4 and planned.count("would run, local") == 5
    assert planned.count("complete, skipped") == 12 - 5 and "] report: would run" in planned
    assert len(list((out / "evaluate/det/simclr/predictions").glob("*.png"))) == 2  # untouched
    stage = next(s for s in build_stages(load_spec(str(run_file)))
                 if s.key == ("evaluate", "det", "simclr"))
    moved = stage.set_aside()
    assert moved and all(".stale-" in str(path) for path in moved)
    assert list((out / "evaluate/det").glob("simclr.stale-*/final_metrics.json"))
    assert not stage.is_complete()
    # its ~3 GB of checkpoints go now, not at the session's end
    shutil.rmtree(out)


def test_preflight_lists_every_missing_input_before_any_stage_starts(tmp_path):
    """A run file with a missing VOC folder, a missing weights file, an empty image folder and
    a bad override: one error lists all of them within seconds, and no stage has started."""
    (tmp_path / "empty" / "class").mkdir(parents=True)
    out = tmp_path / "run"
    spec = {"output_dir": str(out),
            "datasets": {"register_voc": [["gone_train", str(tmp_path / "no_voc"), "train"]]},
            "pretrain": [{"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
                          "overrides": ["DATA.ROOT", str(tmp_path / "empty"),
                                        "SOLVER.MAX_ITER", "2"]},
                         {"name": "b", "config": "configs/demo/simclr_r50_small.yaml",
                          "overrides": ["SOLVER.NO_SUCH_KEY", "1"]}],
            "backbones": [{"name": "sup", "weights": str(tmp_path / "missing.pth")}],
            "transfer": [{"name": "det", "config": "configs/demo/voc_raccoon_faster_rcnn.yaml",
                          "overrides": ["DATASETS.TRAIN", '("gone_train",)'],
                          "backbones": ["random", "a", "sup"]}]}
    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump(spec))
    for flags in ([], ["--check"]):
        result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(run_file),
                                 *flags], capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 2
        err = result.stderr
        assert "pre-flight found" in err and "nothing was started" in err, err
        assert f"{tmp_path / 'empty'} holds no image" in err
        assert "SOLVER.NO_SUCH_KEY" in err
        assert f"{tmp_path / 'missing.pth'} does not exist" in err
        assert "VOC Annotations not found" in err and str(tmp_path / "no_voc") in err
        assert "Traceback" not in err
        assert not out.exists()  # no stage started, nothing written

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"output_dir": str(out), "pretrain": [
        {"name": "a", "config": "configs/demo/simclr_r50_small.yaml",
         "overrides": ["DATA.ROOT", str(DATA / "unlabeled")]}]}))
    check = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"), str(good), "--check"],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    assert check.returncode == 0 and "2 stages, every input found" in check.stdout  # and the report
    assert f"{DATA / 'unlabeled'} (" in check.stdout and not out.exists()


def test_a_stage_is_stale_exactly_when_what_it_is_made_from_changed(tmp_path):
    """The pipeline's records: a pretraining override that changes the results reaches every
    stage built on that run, and only those; one that changes only how it runs (workers,
    checkpoint period) reaches none."""
    from pipeline.cli import build_stages, fingerprints, load_spec

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
                       ("finetune", "det", "a"), ("evaluate", "det", "a"), ("report",)}
    assert hashes(["DATA.NUM_WORKERS", "1", "SOLVER.CHECKPOINT_PERIOD", "7"]) == before


def test_the_dry_run_prints_each_stage_that_would_run_and_writes_nothing(tmp_path):
    """--dry-run of the demo on this machine: every stage's command and log, each after the
    stages it reads, and not a file written (the SLURM executor's: tests/test_slurm.py)."""
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, str(REPO / "tools/pipeline.py"),
                             str(REPO / "configs/pipeline/demo.yaml"), "--output-dir", str(out),
                             "--dry-run"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout
    assert printed.count(": would run, local:") == 11  # 10 stages and the report
    assert f"-m pretrain --config-file configs/demo/simclr_r50_small.yaml --resume OUTPUT_DIR " \
           f"{out / 'pretrain/simclr'}" in printed
    assert "after: <pretrain simclr>" in printed and "after: <convert simclr>" in printed
    assert "dry run: 11 stage(s) would run; nothing was started, submitted or written" in printed
    assert not out.exists()
