"""Downstream classification sets in their official download layouts (base.py: the contract),
by name: `SETS["dtd"].samples(root, "train", "infocl")`. Every module here is imported, so a
set is one class in one module with `@register_set`."""

import importlib
import pkgutil

from .base import SETS, SPLITS, DownstreamSet, Samples, register_set

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def describe_sets() -> str:
    """One line per set: its name, what it is, its layout (for --help)."""
    return "\n".join(f"  {name:<13} {s.title}: {s.layout}" for name, s in sorted(SETS.items()))


__all__ = ["SETS", "SPLITS", "DownstreamSet", "Samples", "describe_sets", "register_set"]
