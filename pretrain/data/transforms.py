"""View transforms (torchvision transforms v2): the SimCLR (and BYOL) and InfoMin recipes, and
the deterministic evaluation transform of the kNN monitor and the linear probe."""

import torch
from torchvision.transforms import v2

from .randaugment import PyContrastRandAugment


def _normalize(cfg, mean=None, std=None):
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean or cfg.INPUT.MEAN, std or cfg.INPUT.STD)]


def blur_kernel_size(size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10% of the image side, odd, at least 3 (also used by the
    blur on the device, device_augment.py)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _blur(size):
    return v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))


def view_probabilities(cfg, view: int) -> tuple:
    """(blur, solarize) probabilities of view 0 or 1: INPUT.VIEW_BLUR_PROB / VIEW_SOLARIZE_PROB
    where set (BYOL's asymmetric views), else INPUT.BLUR_PROB and no solarisation."""
    i = cfg.INPUT
    return (i.VIEW_BLUR_PROB[view] if i.VIEW_BLUR_PROB else i.BLUR_PROB,
            i.VIEW_SOLARIZE_PROB[view] if i.VIEW_SOLARIZE_PROB else 0.0)


def _colour(i):
    return [v2.RandomApply([v2.ColorJitter(*i.COLOR_JITTER)], p=i.COLOR_JITTER_PROB)]


def simclr_view(cfg, view: int = 0):
    """Crop, flip, colour jitter, grayscale, blur, solarise (SimCLR; BYOL adds solarisation and
    makes blur and solarisation differ between the two views)."""
    # Crop, flip and colour run on the PIL image (Pillow's kernels cost the loader workers less
    # CPU than the tensor ones, which matters where workers share cores with training); blur and
    # solarisation run on the uint8 tensor.
    i = cfg.INPUT
    blur, solarize = view_probabilities(cfg, view)
    ops = [v2.RandomResizedCrop(i.SIZE, scale=tuple(i.CROP_SCALE), antialias=True),
           v2.RandomHorizontalFlip(), *_colour(i), v2.RandomGrayscale(p=i.GRAYSCALE_PROB),
           v2.ToImage()]
    if blur > 0:
        ops.append(v2.RandomApply([_blur(i.SIZE)], p=blur))
    if solarize > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize))
    return v2.Compose(ops + _normalize(cfg))


def infomin_view(cfg, view: int = 0):
    """InfoMin's views as PyContrast builds them (augmentation "D"; util.py): crop, flip, colour
    jitter, Gaussian blur, RandAugment (PyContrast's, randaugment.py), grayscale, in this order.
    The InfoMin configs set the values: crop scale (0.2, 1), jitter (0.8, 0.8, 0.8, 0.2) with p
    0.8, blur p 0.5, grayscale p 0.2."""
    i = cfg.INPUT
    blur, _ = view_probabilities(cfg, view)
    return v2.Compose([v2.RandomResizedCrop(i.SIZE, scale=tuple(i.CROP_SCALE), antialias=True),
                       v2.RandomHorizontalFlip(), *_colour(i),
                       v2.RandomApply([_blur(i.SIZE)], p=blur),
                       PyContrastRandAugment(num_ops=2, magnitude=10, magnitude_std=0.5),
                       v2.RandomGrayscale(p=i.GRAYSCALE_PROB), v2.ToImage()] + _normalize(cfg))


def crop_flip_view(cfg, view: int = 0):
    """The loader's share when INPUT.AUGMENT_ON_DEVICE is on: decode, crop, flip, kept as uint8
    (4x less to copy to the device); the rest runs there (pretrain/data/device_augment.py)."""
    i = cfg.INPUT
    return v2.Compose([v2.ToImage(),
                       v2.RandomResizedCrop(i.SIZE, scale=tuple(i.CROP_SCALE), antialias=True),
                       v2.RandomHorizontalFlip()])


VIEW_RECIPES = {"simclr": simclr_view, "infomin": infomin_view}


class MultiView:
    """Applies each view transform to one image; returns the list of views."""

    def __init__(self, views):
        self.views = views

    def __call__(self, img):
        return [view(img) for view in self.views]


def build_view_transform(cfg, num_views: int = 2):
    recipe = crop_flip_view if cfg.INPUT.AUGMENT_ON_DEVICE else VIEW_RECIPES[cfg.INPUT.AUGMENTATION]
    return MultiView([recipe(cfg, view) for view in range(num_views)])


def eval_transform(cfg):
    """Resize + centre crop to INPUT.EVAL_SIZE (default: the training size): small images
    (up to 96 px) to that size, large ones by the ImageNet convention (resize to size * 256/224,
    crop); normalised with INPUT.EVAL_MEAN / EVAL_STD (default: the training ones)."""
    i = cfg.INPUT
    size = i.EVAL_SIZE or i.SIZE
    resize = size if size <= 96 else int(round(size * 256 / 224))
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
                      + _normalize(cfg, tuple(i.EVAL_MEAN), tuple(i.EVAL_STD)))
