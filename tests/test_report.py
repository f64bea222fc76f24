"""The pipeline's report from the results of a run (written here, no training): the seeds' mean
± std and paired differences computed from the per-seed files, the published numbers as their
own rows, and the HTML rendered by a real headless browser."""

import json
import os
import shutil
import statistics
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image


#: bbox AP50 of each (backbone, seed) of the made-up run
AP50 = {("random", 0): 10.0, ("random", 1): 14.0, ("random", 2): 12.0,
        ("simclr", 0): 30.0, ("simclr", 1): 33.0, ("simclr", 2): 31.5,
        ("supervised", 0): 12.5, ("supervised", 1): 13.0, ("supervised", 2): 13.5}


def _finished_run(tmp_path):
    """A run file with two backbones from files plus random, three seeds, one reference, and the
    evaluations' final_metrics.json and fine-tuning metrics of every seed."""
    from pipeline.cli import build_stages, load_spec
    from pipeline.spec import replicate_name

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    spec = {"output_dir": str(tmp_path / "run"), "repeats": 3,
            "backbones": [{"name": "simclr", "weights": str(weights), "label": "ours $\\bogus$"},
                          {"name": "supervised", "weights": str(weights), "label": "torchvision"}],
            "transfer": [{"name": "det", "config": "configs/demo/voc_raccoon_faster_rcnn.yaml",
                          "backbones": ["random", "simclr", "supervised"], "baseline": "random",
                          "metric": "bbox/AP50",
                          "reference": [{"label": "supervised R50", "metric": "bbox/AP50",
                                         "value": 81.3, "source": "MoCo (He et al., CVPR 2020)"}]}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(spec))
    spec = load_spec(str(tmp_path / "run.yaml"))
    for (backbone, k), ap50 in AP50.items():
        run = replicate_name(backbone, k)
        folder = spec.layout.evaluate("det", run)
        folder.mkdir(parents=True)
        (folder / "final_metrics.json").write_text(json.dumps(
            {"bbox": {"AP": ap50 / 2, "AP50": ap50, "AP75": ap50 / 3},
             "run": {"world_size": 1, "ims_per_batch": 2, "images_per_process": 2.0,
                     "test_images": 40}}))
        finetune = spec.layout.finetune("det", run)
        finetune.mkdir(parents=True)
        (finetune / "metrics.json").write_text("\n".join(
            json.dumps({"iteration": i, "total_loss": 2.0 - 0.1 * i + 0.05 * k}) for i in range(5)))
        predictions = folder / "predictions"
        predictions.mkdir()
        Image.fromarray(np.full((60, 130, 3), 40 * k, np.uint8)).save(predictions / "a.png")
    return spec, build_stages(spec)


def test_report_aggregates_the_seeds_and_keeps_published_numbers_apart(tmp_path):
    """(A label with $...$ that mathtext cannot parse is drawn as written.)"""
    from pipeline.report import write_report

    spec, stages = _finished_run(tmp_path)
    report = write_report(spec, stages=stages[:-1])
    text = report.read_text()
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| det |")
            and ("measured |" in line or "(published)" in line)}
    for backbone, label in (("random", "random"), ("simclr", "simclr (ours $\\bogus$)"),
                            ("supervised", "supervised (torchvision)")):
        values = [AP50[backbone, k] for k in range(3)]
        cell = f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
        assert f" | {cell} | " in rows[label] and rows[label].endswith("| 3 | 40 | measured |")
    published = rows["supervised R50 (published)"]
    assert "| 81.30 |" in published and published.endswith("MoCo (He et al., CVPR 2020) |")
    assert published.count("81.30") == 1  # in its metric's column only
    # simclr - random: +23, +19, +19.5 -> far beyond noise; supervised - random: +2.5, -1, +1.5
    diffs = {b: [AP50[b, k] - AP50["random", k] for k in range(3)] for b in ("simclr", "supervised")}
    for backbone, label, verdict in (("simclr", "simclr (ours $\\bogus$)", "beyond noise"),
                                     ("supervised", "supervised (torchvision)", "within noise")):
        mean, std = statistics.mean(diffs[backbone]), statistics.stdev(diffs[backbone])
        line = next(line for line in text.splitlines()
                    if line.startswith(f"| det | {label} | random | bbox/AP50 |"))
        assert f"| {mean:+.2f} ± {std:.2f} | 3 | {verdict} (|mean|" in line
        bound = 4.303 * std / 3 ** 0.5  # Student's t, 2 degrees of freedom, two-sided 95%
        assert f"4.303 SE = {bound:.2f})" in line
    assert (spec.layout.report_files() / "headline_det.png").is_file()


@pytest.mark.skipif(os.environ.get("CI") != "true" and not shutil.which("chromium"),
                    reason="no chromium here: `sudo apt-get install chromium` (Debian) runs "
                           "this test; CI installs it in .ci/run")
def test_the_html_report_renders_in_a_headless_browser(tmp_path):
    from pipeline.report import write_report

    spec, stages = _finished_run(tmp_path)
    html = write_report(spec, stages=stages[:-1]
                        ).with_suffix(".html")
    shot = spec.layout.root / "report_screenshot.png"
    browser = shutil.which("chromium")
    assert browser, "CI=true but chromium is not installed: .ci/run installs it with apt-get"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    subprocess.run([*common, "--window-size=1200,3000", f"--screenshot={shot}",
                    html.as_uri()], capture_output=True, timeout=120, check=True)
    dom = subprocess.run([*common, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert dom.count("<table") == 4  # results, differences, what ran, software
    assert dom.count('<img src="data:image/png;base64,') == 1 + 1 + 3  # chart, curve, 3 images
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1200)
    assert (pixels < 250).mean() > 0.03 and pixels.std() > 20  # text, tables and plots drawn
    # the chart is drawn: its blue bars are somewhere on the page
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=int)
    bars = (abs(rgb[..., 0] - 0x8f) < 12) & (abs(rgb[..., 1] - 0xb3) < 12) & (abs(rgb[..., 2] - 0xd9) < 12)
    assert bars.sum() > 500
