"""The training loop: one `run_step` on detectron2's TrainerBase; everything else is a hook.

It knows no method or objective: the model returns {"losses": {name: tensor}, ...} and the loop
sums the terms, steps the optimiser and calls `on_step_end` (momentum encoders).

Faults it handles: a NaN/inf loss skips the step (weights, optimiser and buffers unchanged) up
to SOLVER.MAX_NONFINITE_SKIPS times, then stops; a failed collective (another rank died or
hung past DIST.TIMEOUT_S) stops this rank with a message instead of a traceback or a hang.
"""

import logging
import math
import os
import time

import torch
import torch.distributed as dist
from detectron2.engine import TrainerBase

from ssl2det.detectron2_internals import quiet_training_exceptions
from ssl2det.distributed import get_world_size, reduce_mean
from ssl2det.errors import UserError
from ssl2det.io import load_checkpoint_file
from ssl2det.precision import Precision

from ..objectives import Progress
from .optim import lr_at, scaled_lr

logger = logging.getLogger(__name__)


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss stayed NaN or infinite; the message names the terms."""


class DistributedFaultError(UserError, RuntimeError):
    """A collective failed: another process died, or hung for longer than DIST.TIMEOUT_S."""


# What gloo and NCCL say when a peer is gone; torch raises most of them as plain RuntimeError.
# ("Application timeout caused pair closure": gloo, when the peer of a pair hung past the
# timeout while another collective of this rank was waiting on it; seen on two nodes.)
_PEER_FAILURE_TEXT = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                      "Timed out", "timed out", "NCCL error", "Socket Timeout",
                      "caused pair closure")


def is_peer_failure(error: BaseException) -> bool:
    return get_world_size() > 1 and (isinstance(error, dist.DistError) or any(
        text in str(error) for text in _PEER_FAILURE_TEXT))


def _reported_in_one_line(error: BaseException) -> bool:
    return isinstance(error, UserError) or is_peer_failure(error)


class PretrainTrainer(TrainerBase):
    def __init__(self, cfg, method, model, optimizer, loader, sampler, device, scaler=None,
                 device_transform=None, precision: Precision = Precision(),
                 channels_last: bool = False):
        super().__init__()
        self.device_transform = device_transform  # batched augmentation on the device, or None
        self.cfg, self.method, self.model, self.optimizer = cfg, method, model, optimizer
        self.loader, self.sampler, self.device = loader, sampler, device
        self.scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
        self.iters_per_epoch = sampler.batches_per_epoch
        self.max_iter = total_iterations(cfg, self.iters_per_epoch)
        self.base_lr = scaled_lr(cfg)
        epochs = cfg.SOLVER.EPOCHS or self.max_iter / self.iters_per_epoch
        # warm-up is a fraction of the schedule, so a MAX_ITER cap shortens both alike
        self.warmup_iters = round(min(1.0, cfg.SOLVER.WARMUP_EPOCHS / epochs) * self.max_iter)
        # what the step runs in on this device (ssl2det.precision: not always SOLVER.AMP's wish)
        self.precision = precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._batches = None
        self.skipped_steps = 0
        # A step with a non-finite loss must leave no trace, also in BN statistics and queues
        # that the forward pass updated: buffers are copied before each forward pass.
        self._buffers = [b for b in method.buffers() if b.is_floating_point() or b.dim() == 0]
        self._buffer_backup = [b.clone() for b in self._buffers]
        # what sane weights look like, to tell a NaN of exploded weights from a passing one
        self._parameter_names = {name for name, _ in method.named_parameters()}
        self.initial_weight_norm = weight_norm(method.state_dict(), self._parameter_names)

    def train(self, start_iter: int, max_iter: int):
        """TrainerBase's loop (hooks around every step); a failed collective becomes one clear
        error, and neither it nor a user error is logged with a traceback on the way out."""
        quiet_training_exceptions(_reported_in_one_line)
        try:
            super().train(start_iter, max_iter)
        except Exception as e:
            if not is_peer_failure(e):
                raise
            raise DistributedFaultError(
                f"rank {dist.get_rank()} stopped at iteration {self.iter}: a collective with "
                f"the other processes failed ({str(e).splitlines()[0][:160]}). Another "
                "process died or hung (see its log, OUTPUT_DIR/log.txt.rankN). Continue "
                "from the last checkpoint with --resume.") from None

    @property
    def epoch(self):
        return self.iter // self.iters_per_epoch

    def is_log_step(self) -> bool:
        return (self.iter + 1) % self.cfg.LOG_PERIOD == 0 or self.iter == self.max_iter - 1

    def _next_batch(self):
        if self._batches is None:
            # One endless stream of batches (see EpochBatchSampler), starting at the position of
            # the current iteration, also in the middle of an epoch after a resume.
            self.sampler.set_epoch(self.epoch, self.iter % self.iters_per_epoch)
            self._batches = iter(self.loader)
        return next(self._batches)

    def run_step(self):
        s = self.cfg.SOLVER
        lr = lr_at(self.iter, self.max_iter, self.base_lr, self.warmup_iters,
                   s.FINAL_LR_FRACTION, s.LR_SCHEDULE, self.iters_per_epoch, s.LR_EPOCH_OFFSET)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_factor", 1.0)

        start = time.perf_counter()
        views, _ = self._next_batch()
        views = [v.to(self.device, non_blocking=True) for v in views]
        data_time = time.perf_counter() - start
        if self.device_transform is not None:
            views = [self.device_transform(v, i) for i, v in enumerate(views)]
        # (a jigsaw view of patches is 5-D: it keeps its layout)
        views = [v.contiguous(memory_format=self.memory_format) if v.dim() == 4 else v
                 for v in views]

        for backup, buffer in zip(self._buffer_backup, self._buffers):
            backup.copy_(buffer)
        with torch.autocast(self.device.type, dtype=self.precision.autocast or torch.bfloat16,
                            enabled=self.precision.autocast is not None):
            losses = self.model(views)["losses"]
        loss = sum(losses.values())
        self.storage.put_scalar("data_time", data_time)
        self.storage.put_scalars(lr=lr, epoch=self.iter / self.iters_per_epoch,
                                 smoothing_hint=False)
        if not self._all_ranks_finite(loss):
            self._skip_step(losses)
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.on_step_end(Progress(self.iter + 1, self.max_iter, self.iters_per_epoch))
        if self.is_log_step():  # loss values are read back from the device only here
            self.storage.put_scalars(loss=reduce_mean(loss.detach().float()).item(),
                                     **_mean_over_ranks(losses), skipped_steps=self.skipped_steps,
                                     smoothing_hint=False)

    def _all_ranks_finite(self, loss) -> bool:
        """One boolean per step (a host sync, like a GradScaler's); all ranks must agree, or
        DDP's gradient all-reduce would wait for a rank that skipped."""
        bad = (~torch.isfinite(loss.detach())).float()
        if get_world_size() > 1:
            dist.all_reduce(bad)
        return not bad.item()

    def _advice_after_nonfinite(self) -> str:
        """What to do next, judged by the last checkpoint: resuming from weights that have
        already exploded (a far too high learning rate) would only fail again."""
        folder = self.cfg.OUTPUT_DIR
        last = os.path.join(folder, "last_checkpoint")
        if not os.path.isfile(last):
            return ("No checkpoint was written; start again with a lower SOLVER.BASE_LR or a "
                    "longer SOLVER.WARMUP_EPOCHS.")
        name = open(last).read().strip()
        data = load_checkpoint_file(os.path.join(folder, name))
        norm = weight_norm(data["model"], self._parameter_names)
        start = self.initial_weight_norm
        where = f"The last checkpoint, {name} (iteration {data.get('iteration')}), has weight norm "
        if not math.isfinite(norm) or norm > 100 * start:
            return (where + f"{norm:.3g}, {start:.3g} at initialisation: the weights have already "
                    "exploded, so resuming from it would fail again. Start a new run (another "
                    "OUTPUT_DIR, no --resume) with a lower SOLVER.BASE_LR or a longer "
                    "SOLVER.WARMUP_EPOCHS.")
        return (where + f"{norm:.3g} ({start:.3g} at initialisation): lower SOLVER.BASE_LR or "
                "lengthen SOLVER.WARMUP_EPOCHS, then continue with --resume.")

    def _skip_step(self, losses):
        for backup, buffer in zip(self._buffer_backup, self._buffers):
            buffer.copy_(backup)
        self.skipped_steps += 1
        values = _mean_over_ranks(losses)
        limit = self.cfg.SOLVER.MAX_NONFINITE_SKIPS
        if self.skipped_steps > limit:
            raise NonFiniteLossError(
                f"the loss was NaN/inf in {self.skipped_steps} steps (limit "
                f"SOLVER.MAX_NONFINITE_SKIPS {limit}); last at iteration {self.iter}, terms "
                f"{values}. {self._advice_after_nonfinite()}")
        logger.warning(f"iteration {self.iter}: non-finite loss (terms {values}); step skipped "
                       f"({self.skipped_steps} of at most {limit})")
        self.storage.put_scalars(skipped_steps=self.skipped_steps, smoothing_hint=False)


def weight_norm(state: dict, names) -> float:
    """The L2 norm of the tensors `names` (the parameters) of a state dict."""
    norms = [v.detach().float().norm() for k, v in state.items() if k in names]
    return torch.stack(norms).norm().item() if norms else 0.0


def _mean_over_ranks(losses: dict) -> dict:
    """{term: its mean over ranks, as a float}: reads the values back from the device."""
    return {name: reduce_mean(v.detach().float()).item() for name, v in losses.items()}


def total_iterations(cfg, iters_per_epoch: int) -> int:
    total = cfg.SOLVER.EPOCHS * iters_per_epoch
    if cfg.SOLVER.MAX_ITER > 0:
        total = min(total, cfg.SOLVER.MAX_ITER) if total > 0 else cfg.SOLVER.MAX_ITER
    return total
