"""RandAugment as PyContrast defines it for InfoMin ("What makes for good views", Tian et al.
2020; HobbitLong/PyContrast, datasets/RandAugment.py and util.py, augmentation "D"). Written
here from that definition:

- 15 operations; each image draws `num_ops` of them uniformly, with replacement;
- each drawn operation is applied with probability 0.5, at a magnitude drawn from
  N(`magnitude`, `magnitude_std`) clipped to [0, 10] (InfoMin: n 2, m 10, std 0.5);
- a magnitude m maps to: rotate +-30 m/10 degrees, shear +-0.3 m/10, translate +-0.45 m/10 of
  the side, colour / contrast / brightness / sharpness factor 0.1 + 1.8 m/10, posterize to
  int(4 m/10) bits, solarize above int(256 m/10), solarize-add int(110 m/10) below 128 (the signs
  drawn at random); geometric operations fill with the ImageNet mean pixel and resample
  bilinearly or bicubically at random.

torchvision's RandAugment differs in its operation set and its magnitude scale (31 bins), so
at "magnitude 10" it is about a third as strong. All randomness comes from torch's RNG, which
the data sets seed per image (exact resumes).
"""

import torch
from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
              "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
              "TranslateXRel", "TranslateYRel")
IMAGENET_MEAN_PIXEL = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))


def _signed(value: float) -> float:
    return -value if torch.rand(()) < 0.5 else value


def operation_arguments(name: str, level: float, signed=_signed) -> tuple:
    """The arguments of operation `name` at magnitude `level` (0-10)."""
    fraction = level / MAX_LEVEL
    if name == "Rotate":
        return (signed(30.0 * fraction),)
    if name in ("ShearX", "ShearY"):
        return (signed(0.3 * fraction),)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (signed(0.45 * fraction),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (0.1 + 1.8 * fraction,)
    if name == "Posterize":
        return (int(4 * fraction),)
    if name == "Solarize":
        return (int(256 * fraction),)
    if name == "SolarizeAdd":
        return (int(110 * fraction),)
    return ()


def _affine(img, matrix, fill):
    resample = Image.BILINEAR if torch.rand(()) < 0.5 else Image.BICUBIC
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def _solarize_add(img, add, threshold=128):
    table = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(table * len(img.getbands()))


def apply_operation(img: Image.Image, name: str, args: tuple, fill=IMAGENET_MEAN_PIXEL):
    w, h = img.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        resample = Image.BILINEAR if torch.rand(()) < 0.5 else Image.BICUBIC
        return img.rotate(args[0], resample=resample, fillcolor=fill)
    if name == "Posterize":
        return img if args[0] >= 8 else ImageOps.posterize(img, args[0])
    if name == "Solarize":
        return ImageOps.solarize(img, args[0])
    if name == "SolarizeAdd":
        return _solarize_add(img, args[0])
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(args[0])
    if name == "ShearX":
        return _affine(img, (1, args[0], 0, 0, 1, 0), fill)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, args[0], 1, 0), fill)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, args[0] * w, 0, 1, 0), fill)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, args[0] * h), fill)
    raise ValueError(f"unknown RandAugment operation {name!r}")


class PyContrastRandAugment:
    """The module docstring's RandAugment, on PIL images."""

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5,
                 prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = (
            num_ops, magnitude, magnitude_std, prob)

    def __call__(self, img: Image.Image) -> Image.Image:
        for index in torch.randint(len(OPERATIONS), (self.num_ops,)).tolist():
            if torch.rand(()) >= self.prob:
                continue
            level = self.magnitude + self.magnitude_std * float(torch.randn(()))
            level = min(MAX_LEVEL, max(0.0, level))
            name = OPERATIONS[index]
            img = apply_operation(img, name, operation_arguments(name, level))
        return img
