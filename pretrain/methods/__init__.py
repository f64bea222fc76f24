"""Base methods: each an nn.Module over a shared `Method` base in a module of its own, registered
by name with the function that adds its config keys (`@register_method("name", add_config)`,
which get_cfg() calls); every module of this package is imported here, so a new method is one
new file.

`forward(views)` returns {"losses": {name: scalar tensor}, "features": Features}: the engine sums
the losses; objectives (pretrain/objectives) read the features and add terms of their own.
"""

import importlib
import pkgutil

from .base import METHODS, Method, MomentumTeacher, ema_encoder_prefixes, register_method
from .build import build_method

for _module in pkgutil.iter_modules(__path__):  # each registers the methods it defines
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "MomentumTeacher", "build_method", "ema_encoder_prefixes",
           "register_method"]
