"""The training set decoded once into device memory (DATA.DECODE_ONCE), for small images.

At 32 px a fast GPU trains a ResNet-18 on thousands of images a second, more than loader
workers decode and augment; yet the whole set fits in its memory as uint8 (CIFAR-10: 50,000 x 3
x 32 x 32 bytes = 147 MiB). So the images are decoded once, and each batch is cropped and flipped
on the device, batched: every random resized crop of the batch is one box of a single
`roi_align` call. Jitter, grayscale, blur and normalisation then run as with
INPUT.AUGMENT_ON_DEVICE (device_augment.py). No loader worker is involved after the decoding.

Differences from the loader path, our choices: a crop is resampled by roi_align (bilinear, with
as many samples per output pixel as the crop has input pixels, so shrinking averages instead of
aliasing), not by torchvision's antialiased resize; the randomness comes from the device's
global RNG, which checkpoints save, instead of per-image seeds, so the views of a resumed run
depend on where it resumed. Every image must have the same size (decoding them once is for
small fixed-size sets; use INPUT.AUGMENT_ON_DEVICE for ImageNet-like folders).
"""

import math

import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional import pil_to_tensor

from ssl2det.errors import DatasetError
from ssl2det.images import printable_path


def random_resized_crop_boxes(n: int, height: int, width: int, scale, ratio, device,
                              attempts: int = 10) -> torch.Tensor:
    """(n, 4) boxes x1, y1, x2, y2 drawn as torchvision's RandomResizedCrop.get_params draws
    them: up to `attempts` tries of an area fraction in `scale` and a log-uniform aspect ratio
    in `ratio` that fit the image, else the centre crop of the nearest allowed ratio."""
    area = height * width
    target = area * torch.empty(n, attempts, device=device).uniform_(*scale)
    log_ratio = torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]),
                                                                 math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fallback = (width, round(width / ratio[0]))
    elif image_ratio > ratio[1]:
        fallback = (round(height * ratio[1]), height)
    else:
        fallback = (width, height)
    found = fits.any(1)
    w = torch.where(found, w, torch.full_like(w, fallback[0]))
    h = torch.where(found, h, torch.full_like(h, fallback[1]))
    # a uniform integer offset, as randint(0, side - crop + 1); centred for the fallback
    top = torch.where(found, torch.floor(torch.rand(n, device=device) * (height - h + 1)),
                      torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(torch.rand(n, device=device) * (width - w + 1)),
                       torch.floor((width - w) / 2))
    return torch.stack([left, top, left + w, top + h], 1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Each uint8 image's box resampled to size x size: float, 0 to 255."""
    index = torch.arange(images.shape[0], device=images.device, dtype=boxes.dtype)[:, None]
    # aligned=True: pixel i covers [i, i+1), so the box (0, 0, W, H) is exactly the image
    crops = roi_align(images.float(), torch.cat([index, boxes], 1), (size, size),
                      spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return crops.clamp_(0, 255)  # interpolation weights can overshoot by a rounding error


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        image, label = self.folder.read(index)  # the bad-image policy applies
        return pil_to_tensor(image), label


def _stack_same_size(items):
    images, labels = zip(*items)
    return list(images), torch.tensor(labels)


class DeviceImageBank:
    """Iterates like the pretraining loader: (list of views, labels) per batch of `sampler`,
    the views already on `device` (float, 0-255, for DeviceAugment)."""

    def __init__(self, folder, sampler, cfg, device, num_views: int = 2):
        self.sampler, self.device, self.num_views = sampler, device, num_views
        self.size = cfg.INPUT.SIZE
        self.scale, self.ratio = tuple(cfg.INPUT.CROP_SCALE), (3 / 4, 4 / 3)
        decoder = torch.utils.data.DataLoader(
            _Decoded(folder), batch_size=512, num_workers=cfg.DATA.NUM_WORKERS,
            collate_fn=_stack_same_size)
        images, labels, filled = None, [], 0
        for batch_images, batch_labels in decoder:
            for k, image in enumerate(batch_images):
                if images is None:
                    images = torch.empty((len(folder), *image.shape), dtype=torch.uint8,
                                         device=device)
                if image.shape != images.shape[1:]:
                    path = folder.name(filled + k)
                    raise DatasetError(
                        f"DATA.DECODE_ONCE needs images of one size: {printable_path(path)} is "
                        f"{tuple(image.shape[1:])}, the first was {tuple(images.shape[2:])}. "
                        "Use INPUT.AUGMENT_ON_DEVICE True instead for folders of mixed sizes")
            images[filled:filled + len(batch_images)] = torch.stack(batch_images).to(device)
            filled += len(batch_images)
            labels += batch_labels.tolist()
        self.images, self.labels = images, torch.tensor(labels, device=device)

    def __iter__(self):
        height, width = self.images.shape[2:]
        for batch in self.sampler:
            index = torch.tensor([i for i, _ in batch], device=self.device)
            images = self.images[index]
            views = [random_flip(crop_resize(images, random_resized_crop_boxes(
                len(index), height, width, self.scale, self.ratio, self.device), self.size))
                for _ in range(self.num_views)]
            yield views, self.labels[index]
