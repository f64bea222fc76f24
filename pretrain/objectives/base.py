"""The contract of an objective: extra named loss terms on top of any base method, and what it
needs from the method, *declared* so that `build_method` applies it (an objective never changes
its method).

Declarations (class attributes, or set in __init__), read once by `build_method`:
    taps           encoder stages ("layer1".."layer3") whose globally pooled outputs `forward`
                   reads from `features.taps`
    feature_noise  std of the Gaussian noise added to the pooled feature h while training (the
                   representation becomes stochastic; `features.mu` stays noise-free). At most
                   one objective of a run may declare it.
    wrap_head      wrap_head(head) -> the module the method uses as its head instead (default:
                   the head unchanged). Not allowed with methods that copy their head into a
                   momentum encoder.
    global_batch_norm  its BatchNorm layers normalise over the whole global batch under DDP,
                   whatever the encoder's do (MODEL.SYNC_BN, MODEL.BN_GROUP_IMAGES)
Hooks, called by the method:
    prepare(views) -> views   change what the encoder sees (MRCL masks it); training only
    forward(features) -> {name: scalar tensor}
    on_step_end(progress)     after each optimiser step (schedules), with a `Progress`
"""

from dataclasses import dataclass

from torch import nn

OBJECTIVES = {}


def register_objective(name, add_config=None):
    """Class decorator: the objective OBJECTIVES names `name`; `add_config(cfg)` adds its keys
    (get_cfg() calls every registered one)."""
    def wrap(cls):
        cls.name, cls.add_config = name, staticmethod(add_config) if add_config else None
        OBJECTIVES[name] = cls
        return cls
    return wrap


@dataclass(frozen=True)
class Features:
    """What a method's forward pass hands to its objectives; one list entry per view (h, mu and
    taps: per view the online encoder computed, which is every view when objectives are
    attached)."""

    h: list  # pooled last-stage feature, what the heads see (noisy while training if declared)
    mu: list  # the same without the feature noise
    taps: list  # {stage: pooled output} of the stages the objectives declared
    views: list  # the views the encoder saw (after the objectives' `prepare`)
    originals: list  # the views as the loader gave them


@dataclass(frozen=True)
class Progress:
    """Where training is after a step: `iteration` steps done of `max_iter`, `iters_per_epoch`
    steps per epoch."""

    iteration: int
    max_iter: int
    iters_per_epoch: int

    @property
    def fraction(self) -> float:
        return self.iteration / self.max_iter

    @property
    def epoch_fraction(self) -> float:
        """Whole epochs done before the step just taken, over all epochs (schedules that change
        once per epoch)."""
        return (self.iteration - 1) // self.iters_per_epoch * self.iters_per_epoch / self.max_iter


class Objective(nn.Module):
    """Base of the objectives (module docstring). `feature_dim` is the size of h."""

    name = ""
    taps = ()
    feature_noise = 0.0
    global_batch_norm = False

    def __init__(self, cfg, feature_dim: int):
        super().__init__()

    def wrap_head(self, head: nn.Module) -> nn.Module:
        return head

    def prepare(self, views):
        return views

    def on_step_end(self, progress: Progress) -> None:
        pass
