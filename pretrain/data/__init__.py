from .build import build_eval_loader, build_pretrain_loader
from .datasets import DatasetError, SeededViews, image_folder
from .sampler import EpochBatchSampler
from .transforms import build_view_transform, eval_transform

__all__ = ["build_pretrain_loader", "build_eval_loader", "DatasetError", "SeededViews",
           "image_folder", "EpochBatchSampler", "build_view_transform", "eval_transform"]
