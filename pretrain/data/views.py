"""The views the loader workers make, on uint8 pixels: the SimCLR recipe (MoCo v2, BYOL and
Barlow Twins are it with other values: crop, flip, colour jitter, grayscale, blur, solarise),
InfoMin's (crop, flip, jitter, blur, PyContrast's RandAugment, grayscale), and the crop-and-flip
share of INPUT.AUGMENT_ON_DEVICE.

Why not torchvision's transforms: at 224 px its Gaussian blur is a dense 23 x 23 convolution on
floats (47 ms a view on one core) and Pillow's hue conversion takes 1.5 ms. Here each operation
is one OpenCV or torch kernel on uint8 (a separable blur, a lookup table, an 8-bit HSV
conversion, torch's vectorised antialiased resize), a JPEG is decoded at 1/2, 1/4 or 1/8 scale
when every crop of it is shrunk at least that much anyway (the DCT's own scaling), and the
pixels become floats once, at the end.

The random parameters are drawn as torchvision draws them (RandomResizedCrop's ten tries and
centre-crop fallback, ColorJitter's random order and factor ranges, RandomApply's coin), from a
`random.Random` that the data set seeds per image and epoch. tests/test_views.py checks every
operation against torchvision's functional reference on the same parameters.
"""

import io
import math
import os

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl2det.images import decode_rgb

from .randaugment import PyContrastRandAugment

#: Scales at which libjpeg can decode directly, largest first, and OpenCV's flag for each.
_JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
                    (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))
# OpenCV >= 4.10 decodes to RGB directly; older ones (a GPU image's) decode BGR, then convert.
# EXIF orientation is ignored, as Pillow's decoding (and torchvision's ImageFolder) ignores it.
_DECODES_RGB = hasattr(cv2, "IMREAD_COLOR_RGB")
_COLOR = ((cv2.IMREAD_COLOR_RGB if _DECODES_RGB else cv2.IMREAD_COLOR)
          | cv2.IMREAD_IGNORE_ORIENTATION)
_CROP_RATIO = (3 / 4, 4 / 3)
BLUR_SIGMA = (0.1, 2.0)


def blur_kernel_size(size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10% of the image side, odd, at least 3 (also used by the
    blur on the device, device_augment.py)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def view_probabilities(cfg, view: int) -> tuple:
    """(blur, solarize) probabilities of view 0 or 1: INPUT.VIEW_BLUR_PROB / VIEW_SOLARIZE_PROB
    where set (BYOL's asymmetric views), else INPUT.BLUR_PROB and no solarisation."""
    i = cfg.INPUT
    return (i.VIEW_BLUR_PROB[view] if i.VIEW_BLUR_PROB else i.BLUR_PROB,
            i.VIEW_SOLARIZE_PROB[view] if i.VIEW_SOLARIZE_PROB else 0.0)


# --- decoding --------------------------------------------------------------------------------

class EncodedImage:
    """An image file's bytes and header (size, mode, format: read without decoding the pixels),
    so that the crops can be drawn before deciding how much of the file to decode. `path` names
    it (a file, or a member of a tar); `data` are its bytes where they were read already."""

    def __init__(self, path: str, data: bytes = None):
        self.path = path
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        self.data = data
        with Image.open(io.BytesIO(self.data)) as header:  # raises on what is not an image
            self.size, self.mode, self.format = header.size, header.mode, header.format

    def decode(self, reduction: int = 1) -> np.ndarray:
        """(H, W, 3) uint8 RGB pixels, at 1/`reduction` scale where the file is a JPEG that
        OpenCV decodes (RGB or grayscale); everything else through Pillow (ssl2det.images),
        whose error names what is wrong with a file that neither can decode."""
        if self.format == "JPEG" and self.mode in ("RGB", "L"):
            flags = _COLOR | dict(_JPEG_REDUCTIONS).get(reduction, 0)
            pixels = cv2.imdecode(np.frombuffer(self.data, np.uint8), flags)
            if pixels is not None:
                return pixels if _DECODES_RGB else cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        try:
            return np.array(decode_rgb(io.BytesIO(self.data)))  # writable, for torch
        except ValueError as e:  # Pillow's word for some broken files
            raise OSError(str(e)) from None

    def reduction_for(self, boxes, size: int) -> int:
        """The largest JPEG reduction that leaves every crop at least `size` pixels on each
        side (so each is still shrunk, never enlarged, by the resize that follows)."""
        if self.format != "JPEG" or self.mode not in ("RGB", "L"):
            return 1
        smallest = min(min(h, w) for _, _, h, w in boxes)
        return next((k for k, _ in _JPEG_REDUCTIONS if smallest >= k * size), 1)


# --- operations on (H, W, 3) uint8 arrays -------------------------------------------------------

def random_resized_crop_box(width: int, height: int, scale, rng, ratio=_CROP_RATIO) -> tuple:
    """(top, left, h, w), drawn as torchvision's RandomResizedCrop.get_params: up to ten tries
    of an area fraction in `scale` and a log-uniform aspect ratio that fit the image, else the
    centre crop of the nearest allowed ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    image_ratio = width / height
    if image_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def scale_box(box, full_size, pixels) -> tuple:
    """A box drawn on the full image, on `pixels` decoded at a reduced scale."""
    top, left, h, w = box
    sy, sx = pixels.shape[0] / full_size[1], pixels.shape[1] / full_size[0]
    y0, x0 = round(top * sy), round(left * sx)
    return y0, x0, max(1, round((top + h) * sy) - y0), max(1, round((left + w) * sx) - x0)


def resized_crop_chw(pixels: np.ndarray, box, size: int) -> torch.Tensor:
    """torchvision's resized_crop on a uint8 tensor (bilinear, antialiased), as a (3, size,
    size) tensor: torch's vectorised uint8 kernel, about 3x faster than Pillow's resize."""
    top, left, h, w = box
    crop = torch.from_numpy(pixels[top:top + h, left:left + w]).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def resized_crop(pixels: np.ndarray, box, size: int) -> np.ndarray:
    """resized_crop_chw as (size, size, 3) pixels."""
    return np.ascontiguousarray(resized_crop_chw(pixels, box, size).permute(1, 2, 0).numpy())


def _lut(pixels, table) -> np.ndarray:
    return cv2.LUT(pixels, np.clip(np.rint(table), 0, 255).astype(np.uint8))


def _gray(pixels) -> np.ndarray:
    return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)


_LEVELS = np.arange(256, dtype=np.float64)


def adjust_brightness(pixels, factor: float) -> np.ndarray:
    return _lut(pixels, _LEVELS * factor)


def adjust_contrast(pixels, factor: float) -> np.ndarray:
    mean = float(_gray(pixels).mean())
    return _lut(pixels, mean + factor * (_LEVELS - mean))


def adjust_saturation(pixels, factor: float) -> np.ndarray:
    gray = cv2.cvtColor(_gray(pixels), cv2.COLOR_GRAY2RGB)
    return cv2.addWeighted(pixels, factor, gray, 1.0 - factor, 0.0)


def adjust_hue(pixels, shift: float) -> np.ndarray:
    """Hue turned by `shift` of the colour circle in 8-bit HSV (hue in 256 steps): as close to
    torchvision's float reference as Pillow's own conversion, 10x faster."""
    hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(round(shift * 256) % 256)  # uint8 arithmetic wraps round the circle
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def to_grayscale(pixels) -> np.ndarray:
    return cv2.cvtColor(_gray(pixels), cv2.COLOR_GRAY2RGB)


def gaussian_blur(pixels, kernel_size: int, sigma: float) -> np.ndarray:
    """torchvision's gaussian_blur (the same kernel size and weights, reflected border) as
    OpenCV's separable uint8 filter."""
    return cv2.GaussianBlur(pixels, (kernel_size, kernel_size), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def solarize(pixels, threshold: int = 128) -> np.ndarray:
    return _lut(pixels, np.where(_LEVELS >= threshold, 255 - _LEVELS, _LEVELS))


# --- the random steps of a view -----------------------------------------------------------------

class Flip:
    name = "RandomHorizontalFlip"
    p = 0.5

    def __call__(self, pixels, rng):
        return cv2.flip(pixels, 1) if rng.random() < self.p else pixels


class ColorJitter:
    """torchvision's ColorJitter inside RandomApply(p): the four operations in a random order,
    each with a factor drawn from its range."""
    name = "ColorJitter"

    def __init__(self, strengths, p: float):
        b, c, s, h = strengths
        self.ranges = [(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c),
                       (max(0.0, 1 - s), 1 + s), (-h, h)]
        self.p = p

    _OPERATIONS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

    def __call__(self, pixels, rng):
        if rng.random() >= self.p:
            return pixels
        order = rng.sample(range(4), 4)
        factors = [rng.uniform(*r) for r in self.ranges]
        for index in order:
            pixels = self._OPERATIONS[index](pixels, factors[index])
        return pixels


class Grayscale:
    name = "RandomGrayscale"

    def __init__(self, p: float):
        self.p = p

    def __call__(self, pixels, rng):
        return to_grayscale(pixels) if rng.random() < self.p else pixels


class GaussianBlur:
    name = "GaussianBlur"

    def __init__(self, size: int, p: float):
        self.kernel_size, self.p = blur_kernel_size(size), p

    def __call__(self, pixels, rng):
        if rng.random() >= self.p:
            return pixels
        return gaussian_blur(pixels, self.kernel_size, rng.uniform(*BLUR_SIGMA))


class Solarize:
    name = "RandomSolarize"

    def __init__(self, p: float):
        self.p = p

    def __call__(self, pixels, rng):
        return solarize(pixels) if rng.random() < self.p else pixels


class RandAugment:
    """PyContrast's RandAugment (randaugment.py), on a Pillow image of the view."""
    name = "RandAugment"
    p = 1.0

    def __init__(self):
        self.augment = PyContrastRandAugment(num_ops=2, magnitude=10, magnitude_std=0.5)

    def __call__(self, pixels, rng):
        return np.array(self.augment(Image.fromarray(pixels), rng))  # writable, for torch


# --- views -------------------------------------------------------------------------------------

class View:
    """A random resized crop to `size`, then `steps`, then normalised with `normalize`
    ((mean, std) of pixels in [0, 1]) into a float (3, size, size) tensor."""

    def __init__(self, size: int, scale, steps, normalize=((0.0,) * 3, (1.0,) * 3)):
        self.size, self.scale, self.steps = size, tuple(scale), list(steps)
        # (x / 255 - mean) / std as one multiply-add
        mean, std = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in normalize)
        self.normalize = (-mean / std, 1 / (255 * std))

    def draw_box(self, image_size, rng) -> tuple:
        return random_resized_crop_box(*image_size, self.scale, rng)

    def __call__(self, pixels, box, rng) -> torch.Tensor:
        pixels = resized_crop(pixels, box, self.size)
        for step in self.steps:
            pixels = step(pixels, rng)
        offset, scale = self.normalize
        return torch.addcmul(offset, torch.from_numpy(pixels).permute(2, 0, 1), scale)


class JigsawView(View):
    """PyContrast's jigsaw input (datasets/util.py:25-47, :325-334): a random resized crop to
    `size` (255) of scale `scale` (0.6, 1), a flip, then a `grid` x `grid` (3 x 3) grid of cells
    of size // grid (85) px, from each of which a `patch` (64) px patch is cut at a random
    offset (0 .. cell - patch, per axis and patch); the patches in row-major order, each
    normalised: a (grid * grid, 3, patch, patch) float tensor."""

    def __init__(self, size, scale, grid, patch, normalize):
        super().__init__(size, scale, [Flip()], normalize)
        self.grid, self.patch = grid, patch
        self.cell = size // grid
        if patch > self.cell:
            raise ValueError(f"a jigsaw patch of {patch} px does not fit a cell of {self.cell}")

    def cells(self, rng) -> list:
        """(top, left) of each patch, row-major."""
        side = self.cell - self.patch
        return [(row * self.cell + rng.randint(0, side), col * self.cell + rng.randint(0, side))
                for row in range(self.grid) for col in range(self.grid)]

    def __call__(self, pixels, box, rng) -> torch.Tensor:
        pixels = Flip()(resized_crop(pixels, box, self.size), rng)
        offset, scale = self.normalize
        chw = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        return torch.stack([torch.addcmul(offset, chw[:, top:top + self.patch,
                                                     left:left + self.patch], scale)
                            for top, left in self.cells(rng)])


class CropFlipView(View):
    """The loader's share when the device augments: crop and flip, as a uint8 (3, size, size)
    tensor (4x less to copy to the device than floats)."""

    def __init__(self, size: int, scale):
        super().__init__(size, scale, [Flip()])

    def __call__(self, pixels, box, rng) -> torch.Tensor:
        chw = resized_crop_chw(pixels, box, self.size)
        return chw.flip(-1) if rng.random() < Flip.p else chw


_single_threaded_pid = None


def _one_opencv_thread():
    """A loader worker is one core's worth of work; OpenCV's own thread pool would only compete
    with the other workers (torch's DataLoader sets torch's threads to 1 in workers alike)."""
    global _single_threaded_pid
    if _single_threaded_pid != os.getpid():
        cv2.setNumThreads(1)
        _single_threaded_pid = os.getpid()


class Views:
    """The views of one image: every crop is drawn first, then the file is decoded once, at the
    smallest scale that serves every crop."""

    def __init__(self, views):
        self.views = views

    def __call__(self, image: EncodedImage, rng) -> list:
        _one_opencv_thread()
        boxes = [view.draw_box(image.size, rng) for view in self.views]
        size = max(view.size for view in self.views)
        pixels = image.decode(image.reduction_for(boxes, size))
        if pixels.shape[:2] != (image.size[1], image.size[0]):
            boxes = [scale_box(box, image.size, pixels) for box in boxes]
        return [view(pixels, box, rng) for view, box in zip(self.views, boxes)]


def simclr_steps(cfg, view: int) -> list:
    """Flip, colour jitter, grayscale, blur, solarise (SimCLR; BYOL adds solarisation and makes
    blur and solarisation differ between the two views)."""
    i = cfg.INPUT
    blur, solarize_p = view_probabilities(cfg, view)
    steps = [Flip(), ColorJitter(i.COLOR_JITTER, i.COLOR_JITTER_PROB), Grayscale(i.GRAYSCALE_PROB)]
    if blur > 0:
        steps.append(GaussianBlur(i.SIZE, blur))
    if solarize_p > 0:
        steps.append(Solarize(solarize_p))
    return steps


def infomin_steps(cfg, view: int) -> list:
    """InfoMin's views as PyContrast builds them (augmentation "D"; util.py): flip, colour
    jitter, Gaussian blur, RandAugment (PyContrast's), grayscale, in this order. The InfoMin
    configs set the values: crop scale (0.2, 1), jitter (0.8, 0.8, 0.8, 0.2) with p 0.8, blur
    p 0.5, grayscale p 0.2."""
    i = cfg.INPUT
    blur, _ = view_probabilities(cfg, view)
    return [Flip(), ColorJitter(i.COLOR_JITTER, i.COLOR_JITTER_PROB), GaussianBlur(i.SIZE, blur),
            RandAugment(), Grayscale(i.GRAYSCALE_PROB)]


RECIPES = {"simclr": simclr_steps, "infomin": infomin_steps}


def build_views(cfg, augment_on_device: bool, num_views: int = 2) -> Views:
    """The loader's views: the whole recipe, normalised; or, when the device augments, only the
    crop and flip, as uint8 (4x less to copy to the device). With INPUT.JIGSAW.ENABLED a
    jigsaw view of patches comes last (InfoMin's PIRL branch, pretrain/methods/mocov2.py)."""
    i = cfg.INPUT
    if augment_on_device:
        return Views([CropFlipView(i.SIZE, i.CROP_SCALE) for _ in range(num_views)])
    steps = RECIPES[i.AUGMENTATION]
    views = [View(i.SIZE, i.CROP_SCALE, steps(cfg, view), (i.MEAN, i.STD))
             for view in range(num_views)]
    j = i.JIGSAW
    if j.ENABLED:
        views.append(JigsawView(j.SIZE, j.SCALE, j.GRID, j.PATCH, (i.MEAN, i.STD)))
    return Views(views)
