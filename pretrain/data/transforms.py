"""View transforms (torchvision transforms v2): the SimCLR and InfoMin recipes, and the
deterministic evaluation transform of the kNN monitor and the linear probe."""

import torch
from torchvision.transforms import v2


def _normalize(cfg):
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.INPUT.MEAN, cfg.INPUT.STD)]


def blur_kernel_size(size: int) -> int:
    """SimCLR's Gaussian blur kernel: 10% of the image side, odd, at least 3 (also used by the
    blur on the device, device_augment.py)."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


def _blur(size):
    return v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))


def simclr_view(cfg):
    # Crop, flip and colour run on the PIL image (Pillow's kernels cost the loader workers less
    # CPU than the tensor ones, which matters where workers share cores with training); the
    # blur runs on the uint8 tensor.
    i = cfg.INPUT
    ops = [v2.RandomResizedCrop(i.SIZE, scale=tuple(i.CROP_SCALE), antialias=True),
           v2.RandomHorizontalFlip(),
           v2.RandomApply([v2.ColorJitter(*i.COLOR_JITTER)], p=i.COLOR_JITTER_PROB),
           v2.RandomGrayscale(p=i.GRAYSCALE_PROB),
           v2.ToImage()]
    if i.BLUR_PROB > 0:
        ops.append(v2.RandomApply([_blur(i.SIZE)], p=i.BLUR_PROB))
    return v2.Compose(ops + _normalize(cfg))


def infomin_view(cfg):
    """InfoMin's augmentation ("What makes for good views", Tian et al. 2020): crop scale
    (0.2, 1), flip, RandAugment(2, 10), colour jitter (0.8, 0.8, 0.8, 0.2) with p 0.8,
    grayscale p 0.2, Gaussian blur p 0.5. The order of the ops is our choice."""
    size = cfg.INPUT.SIZE
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandAugment(num_ops=2, magnitude=10),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([_blur(size)], p=0.5),
    ] + _normalize(cfg))


def crop_flip_view(cfg):
    """The loader's share when INPUT.AUGMENT_ON_DEVICE is on: decode, crop, flip, kept as uint8
    (4x less to copy to the device); the rest runs there (pretrain/data/device_augment.py)."""
    i = cfg.INPUT
    return v2.Compose([v2.ToImage(),
                       v2.RandomResizedCrop(i.SIZE, scale=tuple(i.CROP_SCALE), antialias=True),
                       v2.RandomHorizontalFlip()])


VIEW_RECIPES = {"simclr": simclr_view, "infomin": infomin_view}


class MultiView:
    """Applies a view transform `num_views` times to one image; returns the list of views."""

    def __init__(self, view, num_views=2):
        self.view, self.num_views = view, num_views

    def __call__(self, img):
        return [self.view(img) for _ in range(self.num_views)]


def build_view_transform(cfg):
    if cfg.INPUT.AUGMENT_ON_DEVICE:
        return MultiView(crop_flip_view(cfg))
    return MultiView(VIEW_RECIPES[cfg.INPUT.AUGMENTATION](cfg))


def eval_transform(cfg):
    """Resize + centre crop: for small images to the training size, for large ones the ImageNet
    convention (resize to size * 256/224, crop size)."""
    size = cfg.INPUT.SIZE
    resize = size if size <= 64 else int(round(size * 256 / 224))
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
                      + _normalize(cfg))
