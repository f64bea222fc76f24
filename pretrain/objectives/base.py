"""The interface of an objective: extra named loss terms on top of any base method."""

from torch import nn

OBJECTIVES = {}


def register_objective(name):
    def wrap(cls):
        cls.name = name
        OBJECTIVES[name] = cls
        return cls
    return wrap


class Objective(nn.Module):
    """Attached to a method by `build_method` (config key OBJECTIVES).

    `prepare(views)` may change the views the method sees (MRCL masks them); `forward(features)`
    returns {name: scalar tensor} from the method's features: "h" (per view, the pooled encoder
    output the heads see), "mu" (the same before LBE's noise), "taps", "views" (what the
    encoder saw) and "originals" (the views before `prepare`).
    """

    def __init__(self, cfg, method):
        super().__init__()

    def prepare(self, views):
        return views

    def on_step_end(self, iteration: int, max_iter: int) -> None:
        pass
