"""The fast path keeps the numbers right: augmentation on the device against torchvision's
functional ops, and tools/benchmark.py's layouts, tar-index and start-up modes end to end
(it measures; the tests do not time)."""

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


@pytest.mark.parametrize("key, loader_gives", [("INPUT.AUGMENT_ON_DEVICE", torch.uint8),
                                                ("DATA.DECODE_ONCE", torch.float32)])
def test_pretraining_with_augmentation_on_the_device_runs(key, loader_gives, shared_data,
                                                          tmp_path):
    from pretrain.engine.run import run_pretraining

    cfg = load_config(str(REPO / "configs/pretrain/infocl_cifar10_simclr.yaml"), [
        "DATA.ROOT", str(shared_data / "cifar10-small/test"), "DATA.VAL_ROOT", "",
        "INPUT.SIZE", "16", key, "True", "INPUT.BLUR_PROB", "0.5",
        "SOLVER.BATCH_SIZE", "8", "SOLVER.MAX_ITER", "2", "LOG_PERIOD", "1",
        "DATA.NUM_WORKERS", "0", "MODEL.CHANNELS_LAST", "False", "OUTPUT_DIR", str(tmp_path)])
    trainer = run_pretraining(cfg)
    views, _ = trainer._next_batch()
    assert views[0].dtype == loader_gives and views[0].shape == (8, 3, 16, 16)
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


@pytest.mark.parametrize("config, views", [
    ("simclr_r50_imagenet", None), ("byol_r50_imagenet", ((1.0, 0.1), (0.0, 0.2)))])
def test_the_benchmarks_peer_is_lightlys_transform_with_the_configs_values(config, views):
    """SimCLR's symmetric views against lightly's SimCLRTransform, BYOL's asymmetric blur and
    solarisation against its BYOLTransform, with the config's crop, jitter and grey values."""
    from benchmark.steps import lightly_transform

    cfg = load_config(str(REPO / f"configs/pretrain/{config}.yaml"), [])
    transform, name = lightly_transform(cfg)
    assert name == ("BYOLTransform" if views else "SimCLRTransform")
    views_ops = [{type(t).__name__: t for t in view.transform.transforms}
                 for view in transform.transforms]  # each view's torchvision Compose
    for ops in views_ops:
        crop = ops["RandomResizedCrop"]
        assert crop.size == (cfg.INPUT.SIZE, cfg.INPUT.SIZE)
        assert crop.scale == tuple(cfg.INPUT.CROP_SCALE)
        assert ops["RandomGrayscale"].p == cfg.INPUT.GRAYSCALE_PROB
    if views:
        assert (tuple(ops["GaussianBlur"].prob for ops in views_ops),
                tuple(ops["RandomSolarization"].prob for ops in views_ops)) == views


def test_benchmark_measures_archives_and_shards_against_the_folder_and_the_tar_index(
        shared_data, tmp_path):
    """The layouts mode at tiny settings: our views from the folder, its archive and its shards,
    each as a ratio to the folder; the tar-index mode on a synthetic archive of 2,000 members:
    build and reuse, each with its memory."""
    layouts = tmp_path / "layouts.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/benchmark.py"), "layouts", "--config-file",
         str(REPO / "configs/pretrain/simclr_r50_imagenet.yaml"), "--images", "2", "--repeats",
         "1", "--output", str(layouts), "DATA.ROOT", str(shared_data / "imagenet-sample/train"),
         "INPUT.SIZE", "32"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(layouts.read_text())["results"]
    assert set(results) == {"folder", "archive (tar of per-class tars)", "WebDataset shards"}
    assert all(r["samples_per_s_per_core"] > 0 for r in results.values())
    assert results["folder"]["ratio_to_folder"] == 1.0
    assert results["WebDataset shards"]["ratio_to_folder"] == pytest.approx(
        results["WebDataset shards"]["samples_per_s_per_core"]
        / results["folder"]["samples_per_s_per_core"])

    index = tmp_path / "index.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/benchmark.py"), "tar-index", "--files", "2000",
         "--classes", "10", "--repeats", "1", "--tree", str(tmp_path / "tree"), "--output",
         str(index)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(index.read_text())["results"]
    for side in ("build", "reuse"):
        assert results[side]["members"] == 2000 and results[side]["seconds"] > 0
        # (peak RSS against the RSS read before: equal within a page accounting's MB)
        assert -1 < results[side]["peak_rss_above_start_mb"] < 100


def test_benchmark_measures_the_start_up(shared_data, tmp_path):
    """The start-up mode on a tree of 3,000 links: the first batch with no index, the first
    start with one (lists, writes) and the next (reads). (The benchmark's other modes at tiny
    settings, with their JSON checked: tools/device/run.sh's dry run, tests/test_device.py.)"""
    startup = tmp_path / "startup.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools/benchmark.py"), "startup", "--config-file",
         str(REPO / "configs/pretrain/simclr_r50_imagenet.yaml"), "--files", "3000", "--classes",
         "30", "--tree", str(tmp_path / "tree"), "--repeats", "1", "--output", str(startup),
         "--source", str(shared_data / "imagenet-sample"), "INPUT.SIZE", "32",
         "SOLVER.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(startup.read_text())
    assert set(record["results"]) == {"no index", "index: first start (lists, writes)",
                                      "index: next start (reads)"}
    assert all(r["seconds_to_first_batch"] > 0 for r in record["results"].values())


# --- the training set decoded once into device memory (DATA.DECODE_ONCE) ----------------------

def test_device_crops_are_drawn_as_torchvisions_random_resized_crop():
    from torchvision.transforms import RandomResizedCrop

    from pretrain.data.device_bank import random_resized_crop_boxes

    torch.manual_seed(0)
    scale, ratio, n = (0.08, 1.0), (3 / 4, 4 / 3), 4000
    boxes = random_resized_crop_boxes(n, 32, 40, scale, ratio, "cpu")
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 40).all() and (boxes[:, 3] <= 32).all()
    assert (w >= 1).all() and (h >= 1).all() and (boxes == boxes.round()).all()
    image = torch.zeros(3, 32, 40)
    reference = torch.tensor([RandomResizedCrop.get_params(image, list(scale), list(ratio))
                              for _ in range(n)], dtype=torch.float)  # (top, left, h, w)
    for ours, theirs in ((w * h / (32 * 40), reference[:, 2] * reference[:, 3] / (32 * 40)),
                         (w / h, reference[:, 3] / reference[:, 2]),
                         (boxes[:, 0] / (40 - w + 1), reference[:, 1] / (40 - reference[:, 3] + 1))):
        assert abs(ours.mean() - theirs.mean()) < 0.02
        assert abs(ours.std() - theirs.std()) < 0.02
    # no try fits (a crop larger than the image): the centre crop, as torchvision falls back
    wide = random_resized_crop_boxes(5, 32, 100, (1.0, 1.0), ratio, "cpu")
    assert wide.tolist() == [[28.0, 0.0, 71.0, 32.0]] * 5  # h 32, w round(32 * 4/3), centred


def test_device_crop_of_the_whole_image_is_the_image_and_shrinking_averages():
    from pretrain.data.device_bank import crop_resize

    images = (torch.rand(4, 3, 32, 32) * 255).round()
    whole = torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 4)
    torch.testing.assert_close(crop_resize(images, whole, 32), images, atol=1e-3, rtol=0)
    # 32 -> 16: every output pixel averages its 2 x 2 input pixels (no aliasing)
    torch.testing.assert_close(crop_resize(images, whole, 16),
                               torch.nn.functional.avg_pool2d(images, 2), atol=1e-3, rtol=0)


def test_decoded_once_batches_follow_the_sampler_and_refuse_mixed_sizes(shared_data, tmp_path):
    from pretrain.data import build_pretrain_loader
    from pretrain.data.datasets import ImageFiles
    from ssl2det.errors import DatasetError

    root = shared_data / "cifar10-small/test"
    cfg = load_config("", ["DATA.ROOT", str(root), "INPUT.SIZE", "24", "DATA.DECODE_ONCE", "True",
                           "SOLVER.BATCH_SIZE", "50", "DATA.NUM_WORKERS", "0",
                           "OUTPUT_DIR", str(tmp_path)])
    bank, sampler = build_pretrain_loader(cfg, rank=0, world=1)
    folder = ImageFiles(str(root))
    sampler.set_epoch(3, 2)
    views, labels = next(iter(bank))
    batch = next(sampler.epoch_batches(3, 2))
    assert labels.tolist() == [folder.samples[i][1] for i, _ in batch]
    assert [v.shape for v in views] == [(50, 3, 24, 24)] * 2
    assert all(0 <= v.min() and v.max() <= 255 for v in views)
    assert not torch.equal(views[0], views[1])  # two different crops of each image
    cfg.defrost()
    cfg.DATA.ROOT = str(shared_data / "imagenet-sample/train")
    with pytest.raises(DatasetError, match=r"DATA.DECODE_ONCE needs images of one size: .*\.JPEG"):
        build_pretrain_loader(cfg, rank=0, world=1)
