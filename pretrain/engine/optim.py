"""Optimisers (LARS, SGD, Adam, AdamW) and the learning-rate schedules (SOLVER.LR_SCHEDULE)."""

import math

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's update is scaled by eta * ||w|| / ||g + wd * w||. Parameter groups with
    `lars_exclude=True` (biases and norm layers, in the SimCLR/BYOL recipes) skip both the
    scaling and the weight decay. A parameter whose norm is zero (a BN shift at its start)
    gets the trust ratio `zero_norm_trust`: 1 (ours: it learns at the plain rate), or 0, what
    eta * 0 / ||g|| gives in InfoCL's LARS (its modules/lars.py:81-85 tests ||w|| >= 0,
    always true), so such a parameter never moves. `classic_momentum`: the learning rate enters the velocity
    (v = m v + lr d; w -= v), as in SimCLR's TensorFlow LARS and InfoCL's copy of it, instead of
    scaling the velocity (v = m v + d; w -= lr v, torch's convention); the two differ only
    while the learning rate changes.
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, eta=0.001, foreach=False,
                 classic_momentum=False, zero_norm_trust=1.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars_exclude=False))
        self.foreach, self.classic_momentum = foreach, classic_momentum
        self.zero_norm_trust = zero_norm_trust

    def _trust(self, w_norm, d_norm, eta):
        """eta ||w|| / ||d||; zero_norm_trust where ||w|| = 0; 1 where ||d|| = 0 (no update)."""
        ratio = torch.where((w_norm > 0) & (d_norm > 0), eta * w_norm / d_norm,
                            torch.ones_like(w_norm))
        return torch.where((w_norm == 0) & (d_norm > 0),
                           torch.full_like(w_norm, self.zero_norm_trust), ratio)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.foreach:
            for group in self.param_groups:
                self._group_step_foreach(group)
            return loss
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    d = d.mul(self._trust(w_norm, d_norm, group["eta"]))
                if self.classic_momentum:
                    d = d.mul(group["lr"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(d).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-1.0 if self.classic_momentum
                       else -group["lr"])
        return loss

    def _group_step_foreach(self, group):
        """The same update with multi-tensor kernels: a handful of launches per group instead of
        a dozen per parameter (what dominates the optimiser step of a ResNet on a GPU)."""
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        d = [p.grad for p in params]
        if not group["lars_exclude"]:
            d = torch._foreach_add(d, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))
            d_norm = torch.stack(torch._foreach_norm(d))
            trust = self._trust(w_norm, d_norm, group["eta"])
            d = torch._foreach_mul(d, list(trust.unbind()))
        if self.classic_momentum:
            d = torch._foreach_mul(d, group["lr"])
        buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                   for p in params]  # 0 * momentum + d: the first step's buffer is d
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, d)
        torch._foreach_add_(params, buffers, alpha=-1.0 if self.classic_momentum else -group["lr"])


def param_groups(model, weight_decay, exclude_bias_and_norm, bias_lr_factor=1.0):
    """Weights (decayed, LARS-adapted), and biases + norm parameters: in a group of their own
    when they are excluded from decay and adaptation, or learn at `bias_lr_factor` times the
    rate (Barlow Twins: 0.0048 / 0.2). A group's "lr_factor" scales the scheduled rate."""
    weights, others = [], []
    for p in model.parameters():
        if p.requires_grad:
            (others if p.ndim <= 1 else weights).append(p)
    if not (exclude_bias_and_norm or bias_lr_factor != 1.0):
        weights, others = weights + others, []
    groups = [{"params": weights, "weight_decay": weight_decay, "lr_factor": 1.0}]
    if others:
        groups.append({"params": others, "lr_factor": bias_lr_factor,
                       **({"weight_decay": 0.0, "lars_exclude": True} if exclude_bias_and_norm
                          else {"weight_decay": weight_decay})})
    return groups


def scaled_lr(cfg) -> float:
    s = cfg.SOLVER
    ratio = s.BATCH_SIZE / s.REFERENCE_BATCH_SIZE
    return s.BASE_LR * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[s.LR_SCALING]


def build_optimizer(cfg, model):
    s = cfg.SOLVER
    groups = param_groups(model, s.WEIGHT_DECAY, s.EXCLUDE_BIAS_AND_NORM, s.BIAS_LR_FACTOR)
    lr = scaled_lr(cfg)
    if s.OPTIMIZER == "lars":
        return LARS(groups, lr=lr, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY,
                    eta=s.LARS_ETA, foreach=s.FUSED,
                    classic_momentum=s.LARS_MOMENTUM == "classic",
                    zero_norm_trust=s.LARS_ZERO_NORM_TRUST)
    for g in groups:  # only LARS reads this key
        g.pop("lars_exclude", None)
    fused = {"fused": True} if s.FUSED else {}  # one kernel for all parameters (CPU and CUDA)
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=s.MOMENTUM, weight_decay=s.WEIGHT_DECAY,
                               **fused)
    cls = torch.optim.Adam if s.OPTIMIZER == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, weight_decay=s.WEIGHT_DECAY, **fused)


def lr_at(iteration: int, max_iter: int, base_lr: float, warmup_iters: int,
          final_fraction: float = 0.0, schedule: str = "cosine", iters_per_epoch: int = 1,
          epoch_offset: int = 0) -> float:
    """The learning rate of step `iteration`: a linear warm-up from 0 over `warmup_iters`, then

    cosine            a half cosine to base_lr * final_fraction, step by step;
    cosine_per_epoch  the same, changed once per epoch (torch's CosineAnnealingLR stepped per
                      epoch, as InfoCL's LARS runs and MoCo's adjust_learning_rate); with
                      `epoch_offset` 1 the epochs count from 1 (PyContrast's loop), so the
                      first epoch already runs at cos(pi / epochs);
    constant          base_lr (InfoCL's Adam runs).
    """
    if iteration < warmup_iters:
        return base_lr * (iteration + 1) / warmup_iters
    if schedule == "constant":
        return base_lr
    if schedule == "cosine_per_epoch":
        iteration, warmup_iters = ((iteration // iters_per_epoch + epoch_offset) * iters_per_epoch,
                                   warmup_iters // iters_per_epoch * iters_per_epoch)
    progress = (iteration - warmup_iters) / max(1, max_iter - warmup_iters)
    final = base_lr * final_fraction
    return final + (base_lr - final) * 0.5 * (1 + math.cos(math.pi * progress))
