"""Base methods: each an nn.Module over a shared `Method` base, registered by name.

`forward(views)` returns {"losses": {name: scalar tensor}, "features": {...}}: the engine sums
the losses; objectives (pretrain/objectives) read the features and add terms of their own.
"""

from .base import METHODS, Method, build_method
from . import barlow, byol, mocov2, simclr  # noqa: F401  (register the methods)

__all__ = ["METHODS", "Method", "build_method"]
