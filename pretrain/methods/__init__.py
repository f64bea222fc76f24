"""Base methods: each an nn.Module over a shared `Method` base, registered by name, contributing
its config keys with an `add_*_config(cfg)` that pretrain/config.py calls.

`forward(views)` returns {"losses": {name: scalar tensor}, "features": Features}: the engine sums
the losses; objectives (pretrain/objectives) read the features and add terms of their own.
"""

from .base import METHODS, Method, MomentumTeacher, register_method
from . import barlow, byol, mocov2, simclr  # noqa: F401  (register the methods)
from .build import build_method

__all__ = ["METHODS", "Method", "MomentumTeacher", "build_method", "register_method"]
