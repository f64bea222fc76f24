from .build import build_eval_loader, build_pretrain_loader
from .datasets import ImageFiles, SeededViews
from .sampler import EpochBatchSampler
from .transforms import blur_kernel_size, build_view_transform, eval_transform

__all__ = ["build_pretrain_loader", "build_eval_loader", "ImageFiles", "SeededViews",
           "EpochBatchSampler", "blur_kernel_size", "build_view_transform", "eval_transform"]
