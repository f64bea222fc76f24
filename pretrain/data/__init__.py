from .build import augment_on_device, build_eval_loader, build_pretrain_loader, image_folder
from .datasets import ImageFiles, SeededViews
from .sampler import EpochBatchSampler
from .transforms import eval_transform
from .views import build_views

__all__ = ["augment_on_device", "image_folder", "build_pretrain_loader", "build_eval_loader",
           "ImageFiles", "SeededViews", "EpochBatchSampler", "build_views", "eval_transform"]
