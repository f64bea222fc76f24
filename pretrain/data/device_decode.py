"""JPEG decoding on the training device (INPUT.DECODE_ON_DEVICE, with INPUT.AUGMENT_ON_DEVICE).

Decoding is the largest share of a loader worker's time once the device augments (about 60% of
the two-view sample at 224 px). Here the workers only read each file, check it is a whole RGB or
grayscale JPEG and draw the crops and flips (seeded per image, as the other paths); the main
process decodes the batch on the device with `torchvision.io.decode_jpeg` (nvJPEG on CUDA), then
crops, resizes and flips each view there. Files the device cannot decode (PNG, CMYK, a JPEG cut
short) are decoded and cropped by the worker as in views.py, so the bad-image policy is the same;
a JPEG the device decoder still refuses is decoded on the CPU, and one that fails there too is a
bad image: DATA.BAD_IMAGES "error" stops naming it, "skip" lists it and uses another image of the
batch in its place.

On the CPU (tests) every step is the worker path's own kernel, so the views are equal to it
exactly; on CUDA the resize runs in float and is rounded (within one level).

The decoder's future: torchvision 0.29 deprecates its image decoders in favour of TorchCodec.
`decode_jpeg` stays here while the torchvision releases this project supports have it (the GPU
image's 0.26 has no TorchCodec, and TorchCodec is one more binary dependency whose nvJPEG path
would have to be measured again, docs/performance.md); when a supported torchvision drops it,
this module moves to TorchCodec's JPEG decoder, the one place that decodes on the device. The
deprecation is raised only where this module is used (INPUT.DECODE_ON_DEVICE), and is not
filtered: it is ours to act on.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from ssl2det.errors import DatasetError
from ssl2det.images import BadImages

from .views import CropFlipView, EncodedImage, Flip, Views, resized_crop_chw

_JPEG_END = b"\xff\xd9"


class EncodedViews(Views):
    """The workers' share: per image, either ("jpeg", bytes, boxes, flips) for the device to
    decode, or ("views", [uint8 views]) where the worker decoded the file itself."""

    def __init__(self, size: int, scale, num_views: int = 2):
        super().__init__([CropFlipView(size, scale) for _ in range(num_views)])

    def __call__(self, image: EncodedImage, rng):
        if not (image.format == "JPEG" and image.mode in ("RGB", "L")
                and _JPEG_END in image.data[-64:]):  # a cut-short JPEG ends without its marker
            return ("views", super().__call__(image, rng))
        boxes = [view.draw_box(image.size, rng) for view in self.views]
        flips = [rng.random() < Flip.p for _ in self.views]
        data = torch.frombuffer(bytearray(image.data), dtype=torch.uint8)
        return ("jpeg", data, torch.tensor(boxes), torch.tensor(flips), image.path)


def collate_encoded(items):
    """A batch as lists: the encoded files differ in length."""
    return [item for item, _ in items], torch.tensor([label for _, label in items])


def crop_resize_flip(image: torch.Tensor, box, flip: bool, size: int) -> torch.Tensor:
    """One view of a decoded (3, H, W) uint8 image: the worker path's resized_crop_chw on the
    CPU; float, rounded, on other devices (torch's uint8 resize kernel is the CPU's)."""
    top, left, h, w = (int(v) for v in box)
    if image.device.type == "cpu":
        view = resized_crop_chw(image.permute(1, 2, 0).numpy(), (top, left, h, w), size)
    else:
        crop = image[None, :, top:top + h, left:left + w].float()
        view = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0].round_().clamp_(0, 255).to(torch.uint8)
    return view.flip(-1) if flip else view


class DecodeOnDevice:
    """Iterates like the pretraining loader: (list of uint8 views on `device`, labels) per
    batch of the wrapped DataLoader of EncodedViews items."""

    def __init__(self, loader, device, size: int, bad_images: BadImages, num_views: int = 2):
        self.loader, self.device, self.size = loader, device, size
        self.bad, self.num_views = bad_images, num_views

    def __iter__(self):
        for items, labels in self.loader:
            yield self.decode_batch(items), labels

    def _decode(self, jpegs):
        """Decoded (3, H, W) images on the device, None for a file neither decoder reads."""
        try:
            return decode_jpeg([data for _, data, *_ in jpegs], mode=ImageReadMode.RGB,
                               device=self.device)
        except RuntimeError:  # one bad file fails the batch: decode one by one
            pass
        images = []
        for _, data, _, _, path in jpegs:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                try:
                    pixels = EncodedImage(path, data.numpy().tobytes()).decode()
                    images.append(torch.from_numpy(np.ascontiguousarray(pixels))
                                  .permute(2, 0, 1).to(self.device))
                except OSError as e:
                    self.bad.unreadable(path, e)  # raises under DATA.BAD_IMAGES error
                    images.append(None)
        return images

    def decode_batch(self, items) -> list:
        jpegs = [item for item in items if item[0] == "jpeg"]
        images = iter(self._decode(jpegs) if jpegs else [])
        per_image = []  # [views] per item, None for an unreadable one
        for item in items:
            if item[0] == "views":
                per_image.append([v.to(self.device, non_blocking=True) for v in item[1]])
                continue
            image = next(images)
            _, _, boxes, flips, _ = item
            per_image.append(None if image is None else [
                crop_resize_flip(image, box, bool(flip), self.size)
                for box, flip in zip(boxes, flips)])
        readable = [views for views in per_image if views is not None]
        if not readable:
            raise DatasetError("no image of a batch could be decoded; see the warnings above")
        # an unreadable image's place goes to another image of the batch: the batch keeps its size
        per_image = [views or readable[k % len(readable)] for k, views in enumerate(per_image)]
        return [torch.stack([views[v] for views in per_image]) for v in range(self.num_views)]
