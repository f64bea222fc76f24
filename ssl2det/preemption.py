"""Preemption: on SIGTERM (a cluster reclaiming the machine, a launcher stopping its workers),
SIGUSR1 (SLURM's `--signal` as users write it) or SIGUSR2 (the warning submitit asks SLURM for,
pipeline/executors/), a training run finishes its step, writes a checkpoint and stops with a
line saying how to continue. Without it, up to CHECKPOINT_PERIOD iterations are lost. A second
signal of the same kind ends the process at once. The handlers are installed before the data
loader's workers start, so the workers (forked) inherit them and live through a signal sent to
the whole job."""

import signal

from detectron2.engine import HookBase

from .distributed import any_rank
from .errors import PREEMPTED, UserError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StoppedBySignal(UserError):
    """The run was asked to stop and wrote a checkpoint to continue from."""

    exit_code = PREEMPTED


class CheckpointOnSignal(HookBase):
    """A hook for both stages' trainers. All ranks agree after every step whether one of them
    was signalled, so that they write the checkpoint together and stop at the same iteration."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer
        self.received = None
        self._previous = {}

    def _note(self, signum, frame):
        self.received = signal.Signals(signum).name
        signal.signal(signum, signal.SIG_DFL)  # a second one is not ignored

    def before_train(self):
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._note)

    def after_step(self):
        if not any_rank(self.received is not None):
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        self.checkpointer.save(name, iteration=iteration)
        raise StoppedBySignal(
            f"stopped by {self.received or 'a signal to another process'} after iteration "
            f"{iteration}; {name}.pth is written in {self.checkpointer.save_dir}. Continue with "
            "the same command and --resume.")

    def after_train(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
