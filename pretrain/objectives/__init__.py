"""Objectives added to any base method (config key OBJECTIVES): each module adds named loss
terms through the `Objective` contract (base.py), declares what it needs from the method, and
registers with the function that adds its config keys (`@register_objective("name",
add_config)`, which get_cfg() calls); every module here is imported, so a new objective is one
new file. See docs/objectives.md and docs/architecture.md."""

import importlib
import pkgutil

from .base import OBJECTIVES, Features, Objective, Progress, register_objective

for _module in pkgutil.iter_modules(__path__):  # each registers the objectives it defines
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OBJECTIVES", "Features", "Objective", "Progress", "register_objective"]
