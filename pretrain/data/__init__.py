from .build import build_eval_loader, build_pretrain_loader
from .datasets import (BadImages, DatasetError, ImageFiles, SeededViews,
                       read_bad_image_list, user_message)
from .sampler import EpochBatchSampler
from .transforms import build_view_transform, eval_transform

__all__ = ["build_pretrain_loader", "build_eval_loader", "BadImages", "DatasetError",
           "ImageFiles", "SeededViews", "read_bad_image_list", "user_message", "EpochBatchSampler",
           "build_view_transform", "eval_transform"]
