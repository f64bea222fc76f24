"""Augmentation on the training device (INPUT.AUGMENT_ON_DEVICE): the loader workers decode,
crop and flip to uint8 views; colour jitter, grayscale, blur and normalisation then run batched on
the GPU, with per-image random parameters, so that the CPU pipeline keeps up with fast GPUs.

The one difference from the loader-side recipe (pretrain/data/transforms.py), our choice: the
four jitter operations run in a fixed order (brightness, contrast, saturation, hue) rather than
in a random order per image. Randomness comes from the global torch RNG of the device, which
checkpoints save and restore, so resumed runs stay exact.
"""

import torch
import torch.nn.functional as F

from .views import blur_kernel_size, view_probabilities

# RGB -> luma (ITU-R 601-2), as torchvision's grayscale
_LUMA = (0.299, 0.587, 0.114)


def _uniform(n, low, high, device):
    return torch.empty(n, device=device).uniform_(low, high)


def _chance(n, p, device):
    return torch.rand(n, device=device) < p


def _gray(x):
    weights = x.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _per_image(factor):
    return factor.view(-1, 1, 1, 1)


def color_jitter(x, brightness, contrast, saturation, hue):
    """torchvision's adjust_brightness, _contrast, _saturation and _hue (blends with black, the
    mean gray level, the gray image; a shift in HSV), one factor per image."""
    x = (x * _per_image(brightness)).clamp(0, 1)
    mean = _gray(x).mean((1, 2, 3), keepdim=True)
    x = (mean + (x - mean) * _per_image(contrast)).clamp(0, 1)
    gray = _gray(x)
    x = (gray + (x - gray) * _per_image(saturation)).clamp(0, 1)
    return hue_shift(x, hue).clamp(0, 1)


def hue_shift(x, hue):
    """Shift each image's hue by hue[i] (a fraction of the colour circle) in HSV space."""
    r, g, b = x.unbind(1)
    value, _ = x.max(1)
    delta = value - x.min(1).values
    saturation = torch.where(value > 0, delta / value.clamp_min(1e-12), torch.zeros_like(value))
    d = delta.clamp_min(1e-12)
    h = torch.where(value == r, (g - b) / d,
                    torch.where(value == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h = (h + hue.view(-1, 1, 1)) % 1.0
    # back to RGB without branches: channel n is v - v*s*clamp(min(k, 4 - k), 0, 1) with
    # k = (n + 6h) mod 6 and n = 5, 3, 1 for R, G, B (no per-sector copies of the batch)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
         + 6 * h.unsqueeze(1)) % 6
    ramp = torch.minimum(k, 4 - k).clamp(0, 1)
    return value.unsqueeze(1) * (1 - saturation.unsqueeze(1) * ramp)


def gaussian_blur(x, sigma, kernel_size):
    """Separable blur with one sigma per image (a grouped convolution over the batch)."""
    n, c, h, w = x.shape
    half = kernel_size // 2
    offsets = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, k)
    flat = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, kernel_size, 1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, kernel_size), groups=n * c)
    return flat.view(n, c, h, w)


class DeviceAugment:
    """uint8 views (N, 3, S, S) on the device -> jittered, normalised float views; `view` (0 or
    1) selects the view's blur and solarisation probabilities (BYOL's asymmetric views)."""

    def __init__(self, cfg):
        i = cfg.INPUT
        self.jitter, self.jitter_prob = i.COLOR_JITTER, i.COLOR_JITTER_PROB
        self.gray_prob = i.GRAYSCALE_PROB
        self.view_probabilities = [view_probabilities(cfg, view) for view in (0, 1)]
        self.kernel_size = blur_kernel_size(i.SIZE)
        self.mean, self.std = i.MEAN, i.STD

    @torch.no_grad()
    def __call__(self, views: torch.Tensor, view: int = 0) -> torch.Tensor:
        x = views.float() / 255
        n, device = x.shape[0], x.device
        b, c, s, h = self.jitter
        jittered = color_jitter(x, _uniform(n, max(0, 1 - b), 1 + b, device),
                                _uniform(n, max(0, 1 - c), 1 + c, device),
                                _uniform(n, max(0, 1 - s), 1 + s, device),
                                _uniform(n, -h, h, device))
        x = torch.where(_per_image(_chance(n, self.jitter_prob, device)), jittered, x)
        x = torch.where(_per_image(_chance(n, self.gray_prob, device)), _gray(x).expand_as(x), x)
        blur_prob, solarize_prob = self.view_probabilities[view]
        if blur_prob > 0:
            blurred = gaussian_blur(x, _uniform(n, 0.1, 2.0, device), self.kernel_size)
            x = torch.where(_per_image(_chance(n, blur_prob, device)), blurred, x)
        if solarize_prob > 0:  # torchvision's: invert the levels at or above 128 of 255
            solarized = torch.where(x >= 128 / 255, 1 - x, x)
            x = torch.where(_per_image(_chance(n, solarize_prob, device)), solarized, x)
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std
