"""Image folders (`ROOT/class/*.jpg`, ImageNet layout) for pretraining and evaluation."""

import torch
from torchvision.datasets import ImageFolder


class DatasetError(RuntimeError):
    """A data folder that cannot be used; the message names it and the fix."""


def image_folder(root: str, transform=None) -> ImageFolder:
    try:
        return ImageFolder(root, transform=transform)
    except (FileNotFoundError, OSError) as e:
        raise DatasetError(f"cannot read image folder {root!r}: {e}. Expected the ImageNet "
                           "layout ROOT/<class>/<image>.jpg; set DATA.ROOT / DATA.VAL_ROOT.") from None


class SeededViews(torch.utils.data.Dataset):
    """An image folder whose item (index, epoch) is the list of views of image `index`.

    The augmentation's randomness is seeded by (seed, epoch, index) alone, so the views of an
    image do not depend on the number of loader workers, the number of ranks, or on where a
    resumed run restarted: a killed and resumed run sees exactly the batches it would have seen.
    """

    def __init__(self, root: str, transform, seed: int):
        self.folder = image_folder(root)
        self.transform, self.seed = transform, seed

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, item):
        index, epoch = item
        path, label = self.folder.samples[index]
        image = self.folder.loader(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 100_000_007 + index) % 2**63)
            views = self.transform(image)
        return views, label
