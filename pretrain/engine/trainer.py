"""The training loop: one `run_step` on detectron2's TrainerBase; everything else is a hook.

It knows no method or objective: the model returns {"losses": {name: tensor}, ...} and the loop
sums the terms, steps the optimiser and calls `on_step_end` (momentum encoders).
"""

import math
import time

import torch
from detectron2.engine import TrainerBase

from .distributed import reduce_mean
from .optim import lr_at, scaled_lr


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the terms."""


class PretrainTrainer(TrainerBase):
    def __init__(self, cfg, method, model, optimizer, loader, sampler, device, scaler=None):
        super().__init__()
        self.cfg, self.method, self.model, self.optimizer = cfg, method, model, optimizer
        self.loader, self.sampler, self.device = loader, sampler, device
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
        self.iters_per_epoch = sampler.batches_per_epoch
        self.max_iter = total_iterations(cfg, self.iters_per_epoch)
        self.base_lr = scaled_lr(cfg)
        epochs = cfg.SOLVER.EPOCHS or self.max_iter / self.iters_per_epoch
        # warm-up is a fraction of the schedule, so a MAX_ITER cap shortens both alike
        self.warmup_iters = round(min(1.0, cfg.SOLVER.WARMUP_EPOCHS / epochs) * self.max_iter)
        amp = cfg.SOLVER.AMP
        self.amp_dtype = torch.bfloat16 if amp.DTYPE == "bfloat16" else torch.float16
        self.amp_enabled = amp.ENABLED
        self.memory_format = (torch.channels_last if cfg.MODEL.CHANNELS_LAST
                              else torch.contiguous_format)
        self._batches = None

    @property
    def epoch(self):
        return self.iter // self.iters_per_epoch

    def is_log_step(self) -> bool:
        return (self.iter + 1) % self.cfg.LOG_PERIOD == 0 or self.iter == self.max_iter - 1

    def _next_batch(self):
        if self._batches is not None:
            try:
                return next(self._batches)
            except StopIteration:
                pass
        # A new pass over the data starts at the position of the current iteration, also
        # in the middle of an epoch after a resume.
        self.sampler.set_epoch(self.epoch, self.iter % self.iters_per_epoch)
        self._batches = iter(self.loader)
        return next(self._batches)

    def run_step(self):
        lr = lr_at(self.iter, self.max_iter, self.base_lr, self.warmup_iters,
                   self.cfg.SOLVER.FINAL_LR_FRACTION)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        start = time.perf_counter()
        views, _ = self._next_batch()
        views = [v.to(self.device, non_blocking=True, memory_format=self.memory_format)
                 for v in views]
        data_time = time.perf_counter() - start

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            losses = self.model(views)["losses"]
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_step_end(self.iter + 1, self.max_iter)

        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalars(lr=lr, epoch=self.iter / self.iters_per_epoch,
                                 smoothing_hint=False)
        if self.is_log_step():  # the only place the loop reads values back from the device
            self._log_losses(losses, loss)

    def _log_losses(self, losses, loss):
        values = {name: reduce_mean(v.detach().float()).item() for name, v in losses.items()}
        total = reduce_mean(loss.detach().float()).item()
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"loss is {total} at iteration {self.iter} (terms: {values}). The last good "
                f"checkpoint is in {self.cfg.OUTPUT_DIR}; lower SOLVER.BASE_LR or enable "
                "warm-up (SOLVER.WARMUP_EPOCHS), then resume with --resume.")
        self.storage.put_scalars(loss=total, **values, smoothing_hint=False)


def total_iterations(cfg, iters_per_epoch: int) -> int:
    total = cfg.SOLVER.EPOCHS * iters_per_epoch
    if cfg.SOLVER.MAX_ITER > 0:
        total = min(total, cfg.SOLVER.MAX_ITER) if total > 0 else cfg.SOLVER.MAX_ITER
    return total
