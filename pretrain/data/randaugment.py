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
at "magnitude 10" it is about a third as strong. All randomness comes from the `random.Random`
the data set seeds per image (exact resumes).
"""

from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
              "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
              "TranslateXRel", "TranslateYRel")
IMAGENET_MEAN_PIXEL = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))


def operation_arguments(name: str, level: float, sign: float = 1.0) -> tuple:
    """The arguments of operation `name` at magnitude `level` (0-10); `sign` (+1 or -1, drawn
    by the caller) is the direction of the geometric ones."""
    fraction = level / MAX_LEVEL
    if name == "Rotate":
        return (sign * 30.0 * fraction,)
    if name in ("ShearX", "ShearY"):
        return (sign * 0.3 * fraction,)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (sign * 0.45 * fraction,)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (0.1 + 1.8 * fraction,)
    if name == "Posterize":
        return (int(4 * fraction),)
    if name == "Solarize":
        return (int(256 * fraction),)
    if name == "SolarizeAdd":
        return (int(110 * fraction),)
    return ()


def _resample(rng):
    return Image.BILINEAR if rng.random() < 0.5 else Image.BICUBIC


def _affine(img, matrix, fill, rng):
    return img.transform(img.size, Image.AFFINE, matrix, resample=_resample(rng), fillcolor=fill)


def _solarize_add(img, add, threshold=128):
    table = [min(255, i + add) if i < threshold else i for i in range(256)]
    return img.point(table * len(img.getbands()))


def apply_operation(img: Image.Image, name: str, args: tuple, rng, fill=IMAGENET_MEAN_PIXEL):
    """Operation `name` with `args`; `rng` draws the resampling filter of the geometric ones."""
    w, h = img.size
    if name == "AutoContrast":
        return ImageOps.autocontrast(img)
    if name == "Equalize":
        return ImageOps.equalize(img)
    if name == "Invert":
        return ImageOps.invert(img)
    if name == "Rotate":
        return img.rotate(args[0], resample=_resample(rng), fillcolor=fill)
    if name == "Posterize":
        return img if args[0] >= 8 else ImageOps.posterize(img, args[0])
    if name == "Solarize":
        return ImageOps.solarize(img, args[0])
    if name == "SolarizeAdd":
        return _solarize_add(img, args[0])
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return getattr(ImageEnhance, name)(img).enhance(args[0])
    if name == "ShearX":
        return _affine(img, (1, args[0], 0, 0, 1, 0), fill, rng)
    if name == "ShearY":
        return _affine(img, (1, 0, 0, args[0], 1, 0), fill, rng)
    if name == "TranslateXRel":
        return _affine(img, (1, 0, args[0] * w, 0, 1, 0), fill, rng)
    if name == "TranslateYRel":
        return _affine(img, (1, 0, 0, 0, 1, args[0] * h), fill, rng)
    raise ValueError(f"unknown RandAugment operation {name!r}")


class PyContrastRandAugment:
    """The module docstring's RandAugment, on PIL images."""

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, magnitude_std: float = 0.5,
                 prob: float = 0.5):
        self.num_ops, self.magnitude, self.magnitude_std, self.prob = (
            num_ops, magnitude, magnitude_std, prob)

    def __call__(self, img: Image.Image, rng) -> Image.Image:
        """`rng`: a random.Random."""
        for name in [rng.choice(OPERATIONS) for _ in range(self.num_ops)]:
            if rng.random() >= self.prob:
                continue
            level = min(MAX_LEVEL, max(0.0, rng.gauss(self.magnitude, self.magnitude_std)))
            sign = -1.0 if rng.random() < 0.5 else 1.0
            img = apply_operation(img, name, operation_arguments(name, level, sign), rng)
        return img
