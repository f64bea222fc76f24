"""`build_method`: the method of METHOD.NAME with the objectives of OBJECTIVES attached, their
declared needs applied (pretrain/objectives/base.py). Names are checked here."""

from fvcore.common.config import CfgNode as CN

from ssl2det.errors import ConfigError

from ..objectives import OBJECTIVES
from .base import METHODS, Method


def build_method(cfg: CN) -> Method:
    if cfg.METHOD.NAME not in METHODS:
        raise ConfigError(f"METHOD.NAME = {cfg.METHOD.NAME!r} is not one of "
                          f"{', '.join(sorted(METHODS))}")
    unknown = [name for name in cfg.OBJECTIVES if name not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"OBJECTIVES {unknown} unknown; choose from {', '.join(sorted(OBJECTIVES))}")
    method = METHODS[cfg.METHOD.NAME](cfg)
    objectives = [OBJECTIVES[name](cfg, method.encoder.out_dim) for name in cfg.OBJECTIVES]

    noisy = [o.name for o in objectives if o.feature_noise > 0]
    if len(noisy) > 1:
        raise ConfigError(f"OBJECTIVES {noisy} each make the features stochastic; use one of them")
    method.feature_noise = max((o.feature_noise for o in objectives), default=0.0)
    method.taps = tuple(dict.fromkeys(stage for o in objectives for stage in o.taps))
    for objective in objectives:
        head = objective.wrap_head(method.head)
        if head is not method.head and method.copies_head:
            plain = sorted(name for name, cls in METHODS.items() if not cls.copies_head)
            raise ConfigError(
                f"OBJECTIVES {objective.name} replaces the projector head, which METHOD.NAME "
                f"{cfg.METHOD.NAME} copies into its momentum encoder (the copy would not follow "
                f"it); use it with METHOD.NAME {' or '.join(plain)}")
        method.head = head
    method.objectives.extend(objectives)
    return method
