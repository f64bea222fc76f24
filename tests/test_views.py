"""The loader-side views (pretrain/data/views.py) against torchvision's reference: each operation
on the same parameters, the random parameters drawn from the same distributions, the decoding
equal to Pillow's. Tolerances are in 8-bit levels of the output (0-255)."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pretrain.data import views as V


@pytest.fixture(scope="module")
def photo(shared_data) -> np.ndarray:
    """A real ImageNet photo, shrunk to 96 x 128 to keep the references fast."""
    path = sorted((shared_data / "imagenet-sample" / "train").rglob("*.JPEG"))[3]
    return np.array(Image.open(path).convert("RGB").resize((128, 96)))


@pytest.fixture(scope="module")
def jpeg_file(shared_data):
    return max((shared_data / "imagenet-sample" / "train").rglob("*.JPEG"),
               key=lambda p: Image.open(p).size[0])  # 1152 x 864: every reduction applies


def _float_reference(pixels: np.ndarray) -> torch.Tensor:
    return _chw(pixels).float() / 255


def _chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def _levels(reference: torch.Tensor) -> np.ndarray:
    return reference.clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64) * 255


def _max_error(ours: np.ndarray, reference: torch.Tensor) -> float:
    return float(np.abs(ours.astype(np.float64) - _levels(reference)).max())


# --- each operation on the same parameters -----------------------------------------------------

def test_resized_crop_is_torchvisions_antialiased_resized_crop_exactly(photo):
    for box in [(0, 0, 96, 128), (10, 20, 50, 70), (5, 7, 13, 9)]:  # shrink, shrink, enlarge
        reference = TF.resized_crop(_chw(photo), *box, [32, 32],
                                    antialias=True)
        assert np.array_equal(V.resized_crop(photo, box, 32),
                              reference.permute(1, 2, 0).numpy())
        assert torch.equal(V.resized_crop_chw(photo, box, 32), reference)


@pytest.mark.parametrize("name, factors", [("brightness", (0.2, 0.7, 1.3, 1.8)),
                                           ("contrast", (0.2, 0.7, 1.3, 1.8)),
                                           ("saturation", (0.0, 0.2, 1.3, 1.8))])
def test_brightness_contrast_saturation_are_torchvisions_within_one_level(photo, name, factors):
    ours, reference = getattr(V, f"adjust_{name}"), getattr(TF, f"adjust_{name}")
    for factor in factors:
        assert _max_error(ours(photo, factor), reference(_float_reference(photo), factor)) <= 1.0


def test_hue_is_as_close_to_torchvisions_float_reference_as_its_pillow_kernel(photo):
    """8-bit HSV quantises hue (and the shift) to 256 steps, as Pillow does (what torchvision
    runs on Pillow images): the error is a few levels on saturated pixels, about half a level at most on
    average (0.6), and over the range of shifts no larger than that of torchvision's Pillow kernel."""
    ours, pillow = [], []
    for shift in np.linspace(-0.5, 0.5, 23):
        reference = _levels(TF.adjust_hue(_float_reference(photo), float(shift)))
        error = np.abs(V.adjust_hue(photo, shift) - reference)
        assert error.mean() < 0.6 and error.max() <= 8
        ours.append(error.mean())
        kernel = TF.adjust_hue(Image.fromarray(photo), float(shift))
        pillow.append(np.abs(np.asarray(kernel) - reference).mean())
    assert np.mean(ours) <= np.mean(pillow)


def test_grayscale_blur_solarize_and_flip_are_torchvisions(photo):
    gray = TF.rgb_to_grayscale(_float_reference(photo), num_output_channels=3)
    assert _max_error(V.to_grayscale(photo), gray) <= 1.0
    for size, sigma in [(224, 0.1), (224, 1.3), (224, 2.0), (64, 0.7)]:
        k = V.blur_kernel_size(size)
        reference = TF.gaussian_blur(_float_reference(photo), [k, k], [sigma, sigma])
        ours = V.gaussian_blur(photo, k, sigma)  # OpenCV's fixed-point weights: 1.5 levels
        assert _max_error(ours, reference) <= 1.5
        assert np.abs(ours - _levels(reference)).mean() < 0.3
    chw = _chw(photo)
    assert np.array_equal(V.solarize(photo), TF.solarize(chw, 128).permute(1, 2, 0).numpy())
    flipped = V.Flip()(photo, _AlwaysBelow())
    assert np.array_equal(flipped, TF.horizontal_flip(chw).permute(1, 2, 0).numpy())


class _AlwaysBelow(random.Random):
    """A coin that always lands on 'apply'."""

    def random(self):
        return 0.0


# --- the random parameters -----------------------------------------------------------------

def _ks_distance(a, b) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a)
                        - np.searchsorted(b, grid, "right") / len(b)).max())


def _ks_bound(n: int) -> float:
    return 1.63 * math.sqrt(2 / n)  # the 1% level for two samples of n


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.2, 1.0)])
def test_crop_boxes_are_drawn_as_torchvisions_random_resized_crop(scale):
    n, (width, height) = 4000, (500, 375)
    rng = random.Random(0)
    ours = np.array([V.random_resized_crop_box(width, height, scale, rng) for _ in range(n)])
    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    theirs = np.array([v2.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
                       for _ in range(n)])
    for boxes in (ours, theirs):
        assert ((boxes[:, 0] + boxes[:, 2] <= height) & (boxes[:, 1] + boxes[:, 3] <= width)).all()

    def features(b):  # area fraction, log aspect ratio, relative offsets
        top, left, h, w = b.T.astype(float)
        return [h * w / (width * height), np.log(w / h), top / np.maximum(1, height - h),
                left / np.maximum(1, width - w)]
    for mine, reference in zip(features(ours), features(theirs)):
        assert _ks_distance(mine, reference) < _ks_bound(n)


def test_crop_fallback_is_torchvisions_centre_crop():
    image = torch.empty(3, 10, 1000)  # no crop of area >= 8% fits in 10 rows at ratio <= 4/3
    expected = v2.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
    assert V.random_resized_crop_box(1000, 10, (0.08, 1.0), random.Random(0)) == tuple(expected)


def test_colour_jitter_ranges_and_random_order_are_torchvisions(monkeypatch):
    jitter = V.ColorJitter((0.8, 0.8, 0.8, 0.2), p=0.8)
    reference = v2.ColorJitter(0.8, 0.8, 0.8, 0.2)
    assert jitter.ranges == [tuple(reference.brightness), tuple(reference.contrast),
                             tuple(reference.saturation), tuple(reference.hue)]
    calls = []
    operations = tuple((lambda i: lambda pixels, f: calls.append((i, f)) or pixels)(i)
                       for i in range(4))
    monkeypatch.setattr(V.ColorJitter, "_OPERATIONS", operations)
    rng, orders, applied = random.Random(0), set(), 0
    for _ in range(3000):
        calls.clear()
        jitter(None, rng)
        if calls:
            applied += 1
            orders.add(tuple(i for i, _ in calls))
            for i, factor in calls:
                low, high = jitter.ranges[i]
                assert low <= factor <= high
    assert len(orders) == 24  # every order of the four operations
    assert abs(applied / 3000 - 0.8) < 0.03


def test_a_whole_view_has_the_distribution_of_torchvisions_pipeline(photo):
    """The SimCLR/BYOL view (crop, flip, jitter, grayscale, blur, solarise) against the same
    recipe in torchvision's transforms v2 on Pillow images: the distributions of each view's
    mean level, contrast, colourfulness (grayscale views have none) and detail (the crop's
    scale) agree (two-sample KS tests at 1%, fixed seeds)."""
    from pretrain.config import load_config

    cfg = load_config("", ["INPUT.SIZE", "48", "INPUT.COLOR_JITTER", "(0.4, 0.4, 0.2, 0.1)",
                           "INPUT.VIEW_BLUR_PROB", "(1.0, 0.1)",
                           "INPUT.VIEW_SOLARIZE_PROB", "(0.0, 0.2)"])
    view = V.build_views(cfg, augment_on_device=False).views[1]  # blur 0.1, solarise 0.2
    identity = ((0.0,) * 3, (1 / 255,) * 3)  # keep levels 0..255 to compare
    view.normalize = V.View(48, (0.08, 1.0), [], identity).normalize
    reference = v2.Compose([
        v2.RandomResizedCrop(48, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2),
        v2.PILToTensor(), v2.RandomApply([v2.GaussianBlur(V.blur_kernel_size(48), (0.1, 2.0))],
                                         p=0.1), v2.RandomSolarize(128, p=0.2)])
    n, rng, pil = 1500, random.Random(0), Image.fromarray(photo)
    torch.manual_seed(0)
    ours = torch.stack([view(photo, view.draw_box((128, 96), rng), rng) for _ in range(n)])
    theirs = torch.stack([reference(pil).float() for _ in range(n)])
    statistics = (lambda x: x.mean((1, 2, 3)), lambda x: x.std((1, 2, 3)),
                  lambda x: (x.amax(1) - x.amin(1)).mean((1, 2)),
                  lambda x: (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3)))
    for statistic in statistics:
        assert _ks_distance(statistic(ours).numpy(), statistic(theirs).numpy()) < _ks_bound(n)


# --- decoding ----------------------------------------------------------------------------------

def test_jpegs_decode_as_pillow_decodes_them_also_at_reduced_scale(jpeg_file, tmp_path):
    image = V.EncodedImage(str(jpeg_file))
    assert np.array_equal(image.decode(), np.asarray(Image.open(jpeg_file).convert("RGB")))
    for k in (2, 4, 8):
        draft = Image.open(jpeg_file)
        draft.draft("RGB", (draft.size[0] // k, draft.size[1] // k))
        assert np.array_equal(image.decode(k), np.asarray(draft.convert("RGB")))
    gray = tmp_path / "gray.jpg"
    Image.open(jpeg_file).convert("L").save(gray)
    assert np.array_equal(V.EncodedImage(str(gray)).decode(),
                          np.asarray(Image.open(gray).convert("RGB")))


def test_other_files_decode_through_pillow_and_broken_ones_raise(jpeg_file, tmp_path):
    png, cmyk, truncated = tmp_path / "png.jpg", tmp_path / "cmyk.jpg", tmp_path / "cut.jpg"
    Image.open(jpeg_file).save(png, format="PNG")
    Image.open(jpeg_file).convert("CMYK").save(cmyk)
    truncated.write_bytes(jpeg_file.read_bytes()[:20000])
    for path in (png, cmyk):
        assert np.array_equal(V.EncodedImage(str(path)).decode(),
                              np.asarray(Image.open(path).convert("RGB")))
    with pytest.raises(OSError, match="truncated"):
        V.EncodedImage(str(truncated)).decode()
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(OSError):
        V.EncodedImage(str(tmp_path / "text.jpg"))


def test_a_jpeg_is_decoded_small_only_when_every_crop_is_shrunk_as_much(jpeg_file):
    image = V.EncodedImage(str(jpeg_file))  # 1152 x 864
    assert image.reduction_for([(0, 0, 864, 1152)], 224) == 2
    assert image.reduction_for([(0, 0, 864, 1152), (0, 0, 447, 600)], 224) == 1
    assert image.reduction_for([(0, 0, 800, 900)], 96) == 8
    png = V.EncodedImage.__new__(V.EncodedImage)
    png.format, png.mode = "PNG", "RGB"
    assert png.reduction_for([(0, 0, 864, 1152)], 96) == 1


def test_views_from_a_reduced_decode_stay_close_to_the_full_decode(jpeg_file):
    """DCT scaling then the antialiased resize, against the resize of the full image: the crop
    box is the same up to a fraction of an output pixel."""
    image = V.EncodedImage(str(jpeg_file))
    full = image.decode()
    for box in [(0, 0, 864, 1152), (100, 200, 500, 600)]:
        reduced = image.decode(2)
        small = V.resized_crop(reduced, V.scale_box(box, image.size, reduced), 224)
        error = np.abs(small.astype(float) - V.resized_crop(full, box, 224))
        assert error.mean() < 2.0


def test_views_are_seeded_per_image_and_epoch_and_the_device_share_is_crop_and_flip(shared_data):
    from pretrain.config import load_config
    from pretrain.data import ImageFiles, SeededViews

    folder = ImageFiles(str(shared_data / "imagenet-sample" / "train"))
    cfg = load_config("", ["INPUT.SIZE", "64"])
    loader_side = SeededViews(folder, V.build_views(cfg, augment_on_device=False), seed=0)
    (a, b), _ = loader_side[(5, 0)]
    (c, _), _ = loader_side[(5, 0)]
    (d, _), _ = loader_side[(5, 1)]
    assert a.dtype == torch.float32 and a.shape == (3, 64, 64)
    assert torch.equal(a, c) and not torch.equal(a, d) and not torch.equal(a, b)

    device_side = SeededViews(folder, V.build_views(cfg, augment_on_device=True), seed=0)
    views, _ = device_side[(5, 0)]
    assert [v.dtype for v in views] == [torch.uint8] * 2 and views[0].shape == (3, 64, 64)
    rng = random.Random((0 * 1_000_003 + 0 * 100_000_007 + 5) % 2**63)  # SeededViews' seed
    image = V.EncodedImage(folder.samples[5][0])
    boxes = [V.random_resized_crop_box(*image.size, cfg.INPUT.CROP_SCALE, rng) for _ in views]
    decoded = image.decode(image.reduction_for(boxes, 64))  # at 1/2 or 1/4 scale when it can
    boxes = [V.scale_box(box, image.size, decoded) for box in boxes]
    pixels = _chw(decoded)
    for view, box in zip(views, boxes):
        crop = TF.resized_crop(pixels, *box, [64, 64], antialias=True)
        flipped = rng.random() < 0.5
        assert torch.equal(view, TF.horizontal_flip(crop) if flipped else crop)


# --- decoding on the device (INPUT.DECODE_ON_DEVICE), run on the CPU here ----------------------

def _loader(cfg, device="cpu"):
    from pretrain.data import build_pretrain_loader

    loader, sampler = build_pretrain_loader(cfg, 0, 1, torch.device(device),
                                            on_device=cfg.INPUT.AUGMENT_ON_DEVICE)
    sampler.set_epoch(0, 0)
    return loader


def _device_decode_cfg(root, out, *extra):
    from pretrain.config import load_config

    return load_config("", ["DATA.ROOT", str(root), "OUTPUT_DIR", str(out), "INPUT.SIZE", "192",
                            "SOLVER.BATCH_SIZE", "13", "DATA.NUM_WORKERS", "0",
                            "INPUT.AUGMENT_ON_DEVICE", "True", *extra])


@pytest.fixture
def mixed_folder(shared_data, tmp_path):
    """Real ImageNet JPEGs (under 384 px on their short side: at 192 px views the workers then
    decode them at full scale too), a PNG and a CMYK JPEG (which the device decoder leaves to
    the workers) and a JPEG cut short (a bad file)."""
    sources = [p for p in sorted((shared_data / "imagenet-sample" / "train").rglob("*.JPEG"))
               if min(Image.open(p).size) < 384][:10]
    root = tmp_path / "mixed"
    for k, source in enumerate(sources):
        (root / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"c{k % 2}" / f"{k}.jpg").write_bytes(source.read_bytes())
    Image.open(sources[0]).save(root / "c0" / "png.jpg", format="PNG")
    Image.open(sources[1]).convert("CMYK").save(root / "c1" / "cmyk.jpg")
    data = sources[2].read_bytes()
    (root / "c0" / "cut.jpg").write_bytes(data[:len(data) // 2])
    return root


def test_views_decoded_on_the_device_equal_the_workers_views(mixed_folder, tmp_path):
    """The same crops and flips from the same seeds: on the CPU the decoded-on-device views are
    the workers' crop-and-flip views exactly, the PNG, the CMYK JPEG and the bad file
    included (the workers decode those three, and skip and list the bad one)."""
    workers = _loader(_device_decode_cfg(mixed_folder, tmp_path / "a"))
    device = _loader(_device_decode_cfg(mixed_folder, tmp_path / "b",
                                        "INPUT.DECODE_ON_DEVICE", "True"))
    batches = 0
    for (ours, labels), (theirs, their_labels) in zip(device, workers):
        assert torch.equal(labels, their_labels)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
        assert ours[0].dtype == torch.uint8 and ours[0].shape == (13, 3, 192, 192)
        batches += 1
        if batches == 2:  # a batch is the whole folder, 13 files: two epochs
            break
    for out in ("a", "b"):
        listed = (tmp_path / out / "bad_images.txt").read_text()
        assert "cut.jpg" in listed


def test_a_jpeg_only_the_device_would_see_is_skipped_or_stops_the_run(mixed_folder, tmp_path):
    """A whole-looking JPEG (it ends with its end marker) that no decoder reads reaches the
    main process: "skip" lists it and fills its place from the batch, "error" names it."""
    from ssl2det.errors import DatasetError

    from pretrain.data import ImageFiles
    from pretrain.data.device_decode import DecodeOnDevice, EncodedViews
    from ssl2det.images import BadImages

    data = next(mixed_folder.rglob("0.jpg")).read_bytes()
    (mixed_folder / "c1" / "nodata.jpg").write_bytes(data[:data.find(b"\xff\xda")] + b"\xff\xd9")
    views = EncodedViews(48, (0.08, 1.0))
    folder = ImageFiles(str(mixed_folder))
    good = [i for i, (p, _) in enumerate(folder.samples) if p.endswith(("0.jpg", "3.jpg"))]
    bad = [i for i, (p, _) in enumerate(folder.samples) if p.endswith("nodata.jpg")]
    items = [views(V.EncodedImage(folder.samples[i][0]), random.Random(i)) for i in good + bad]
    assert [item[0] for item in items] == ["jpeg"] * 3  # the workers did not decode them
    skip = DecodeOnDevice(None, torch.device("cpu"), 48, BadImages("skip", str(tmp_path)))
    first, second = skip.decode_batch(items)
    assert first.shape == (3, 3, 48, 48) and torch.equal(first[2], first[0])
    assert "nodata.jpg" in (tmp_path / "bad_images.txt").read_text()
    stop = DecodeOnDevice(None, torch.device("cpu"), 48, BadImages("error"))
    with pytest.raises(DatasetError, match="nodata.jpg"):
        stop.decode_batch(items)


def test_augmenting_on_the_device_is_the_default_with_cuda_and_said(caplog):
    from pretrain.config import load_config
    from pretrain.data import augment_on_device

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    unset = load_config("", [])
    assert unset.INPUT.AUGMENT_ON_DEVICE is None
    with caplog.at_level("INFO", logger="pretrain"):
        assert augment_on_device(unset, cuda) is True
    assert "INPUT.AUGMENT_ON_DEVICE is not set: augmenting batches on cuda:0" in caplog.text
    assert augment_on_device(unset, cpu) is False
    assert augment_on_device(load_config("", ["INPUT.AUGMENTATION", "infomin"]), cuda) is False
    assert augment_on_device(load_config("", ["INPUT.AUGMENT_ON_DEVICE", "False"]), cuda) is False
    assert augment_on_device(load_config("", ["INPUT.AUGMENT_ON_DEVICE", "True"]), cpu) is True
