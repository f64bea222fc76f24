"""Objectives added to any base method (config key OBJECTIVES): each module adds named loss
terms through the `Objective` contract (base.py), declares what it needs from the method, and
contributes its config keys with an `add_*_config(cfg)` that pretrain/config.py calls. See
docs/objectives.md and docs/architecture.md."""

from .base import OBJECTIVES, Features, Objective, Progress, register_objective
from . import infocl_lbe, infocl_rc, mrcl, superinfo  # noqa: F401  (register them)

__all__ = ["OBJECTIVES", "Features", "Objective", "Progress", "register_objective"]
