"""The fast path keeps the numbers right: augmentation on the device against torchvision's
functional ops, and tools/benchmark.py end to end (it measures; the tests do not time)."""

import json
import subprocess
import sys

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from conftest import REPO
from pretrain.config import load_config
from pretrain.data.device_augment import DeviceAugment, color_jitter, gaussian_blur


def _images(n=6, size=32):
    g = torch.Generator().manual_seed(0)
    # smooth random images: low-frequency content like photos, plus a little noise
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)


def _cfg(*overrides):
    return load_config("", ["INPUT.SIZE", "32", "INPUT.AUGMENT_ON_DEVICE", "True", *overrides])


def test_jitter_matches_torchvision_with_a_factor_per_image():
    x = _images()
    b, c, s, h = (torch.tensor(v) for v in ([0.6, 1.4, 1.0, 0.8, 1.2, 1.1],
                                             [1.3, 0.6, 1.0, 1.1, 0.9, 1.0],
                                             [0.7, 1.5, 1.0, 0.0, 1.2, 1.3],
                                             [0.0, 0.1, -0.1, 0.05, -0.5, 0.45]))
    ours = color_jitter(x, b, c, s, h)
    for i in range(len(x)):
        reference = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(
            TF.adjust_brightness(x[i], b[i].item()), c[i].item()), s[i].item()), h[i].item())
        torch.testing.assert_close(ours[i], reference, atol=1e-4, rtol=0)
    assert (ours - x).abs().amax((1, 2, 3)).min() > 0.01  # every image changed


def test_blur_matches_torchvision_gaussian_blur_per_image():
    x = _images()
    sigmas = torch.tensor([0.3, 0.8, 1.2, 1.6, 2.0, 0.5])
    ours = gaussian_blur(x, sigmas, 5)
    for i, sigma in enumerate(sigmas.tolist()):
        reference = TF.gaussian_blur(x[i], [5, 5], [sigma, sigma])
        torch.testing.assert_close(ours[i], reference, atol=1e-5, rtol=0)


def test_device_augment_without_random_ops_is_the_loader_normalisation():
    views = (_images() * 255).round().to(torch.uint8)
    augment = DeviceAugment(_cfg("INPUT.COLOR_JITTER_PROB", "0.0", "INPUT.GRAYSCALE_PROB", "0.0",
                                 "INPUT.BLUR_PROB", "0.0"))
    reference = TF.normalize(TF.to_dtype(views, torch.float32, scale=True),
                             [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(augment(views), reference)


def test_device_augment_draws_parameters_per_image():
    views = (_images(n=64) * 255).round().to(torch.uint8)
    cfg = _cfg("INPUT.COLOR_JITTER", "(0.4, 0.0, 0.0, 0.0)", "INPUT.COLOR_JITTER_PROB", "1.0",
               "INPUT.GRAYSCALE_PROB", "0.5", "INPUT.BLUR_PROB", "0.0")
    torch.manual_seed(0)
    out = DeviceAugment(cfg)(views)
    x = out * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor(
        [0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    gray = (x[:, 0] - x[:, 1]).abs().amax((1, 2)) < 1e-5
    assert 16 < gray.sum() < 48  # grayscale with p 0.5, image by image
    color = ~gray
    ratio = x[color].mean((1, 2, 3)) / (views[color].float() / 255).mean((1, 2, 3))
    assert ratio.min() > 0.55 and ratio.max() < 1.45 and ratio.std() > 0.05  # brightness 0.4


def test_pretraining_with_augmentation_on_the_device_runs(shared_data, tmp_path):
    from pretrain.engine.run import run_pretraining

    cfg = load_config(str(REPO / "configs/pretrain/simclr_r18_cifar.yaml"), [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "DATA.VAL_ROOT", "",
        "INPUT.SIZE", "16", "INPUT.AUGMENT_ON_DEVICE", "True", "INPUT.BLUR_PROB", "0.5",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "2", "LOG_PERIOD", "1",
        "DATA.NUM_WORKERS", "0", "MODEL.CHANNELS_LAST", "False", "OUTPUT_DIR", str(tmp_path)])
    trainer = run_pretraining(cfg)
    views, _ = trainer._next_batch()
    assert views[0].dtype == torch.uint8 and views[0].shape == (8, 3, 16, 16)
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


@pytest.mark.slow
def test_benchmark_compares_ours_with_lightly_in_one_run(shared_data, tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/benchmark.py"), "pretrain", "--config-file",
         str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"), "--warmup", "1", "--iters", "2",
         "--repeats", "1", "--output", str(out),
         "DATA.ROOT", str(shared_data / "cifar10-small/test"), "INPUT.SIZE", "16",
         "SOLVER.BATCH_SIZE", "16", "DATA.NUM_WORKERS", "1", "MODEL.CHANNELS_LAST", "False"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio ours / lightly (samples_per_s)" in result.stdout
    record = json.loads(out.read_text())
    for side in ("ours", "lightly"):
        r = record["results"][side]
        assert r["samples_per_s"] > 0 and r["model_only_samples_per_s"] > 0
        assert 0 <= r["data_wait_share"] <= 1 and r["peak_memory_mb"] > 100
    ours, lightly = record["results"]["ours"], record["results"]["lightly"]
    assert record["ratio"] == pytest.approx(ours["samples_per_s"] / lightly["samples_per_s"])
