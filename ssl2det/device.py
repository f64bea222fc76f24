"""Which device a run uses."""

import torch

from .errors import ConfigError


def resolve_device(wanted: str, key: str = "MODEL.DEVICE") -> torch.device:
    """"auto" (a GPU if one is visible, else the CPU), "cuda" or "cpu"; asking for a GPU where
    none is visible is a ConfigError naming the config `key`."""
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but no GPU is visible; use {key} cpu")
    return torch.device(wanted)
