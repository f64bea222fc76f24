"""Objectives added to any base method (config key OBJECTIVES): each module adds named loss
terms through the `Objective` interface and its own config keys. See docs/objectives.md."""

from .base import OBJECTIVES, Objective, register_objective
from . import infocl_lbe, infocl_rc, mrcl, superinfo  # noqa: F401  (register them)

__all__ = ["OBJECTIVES", "Objective", "register_objective"]
