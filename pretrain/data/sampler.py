"""The batch sampler of pretraining: one global permutation per epoch, split across ranks."""

import itertools

import torch


class EpochBatchSampler(torch.utils.data.Sampler):
    """Yields, for this rank, batches of (index, epoch) pairs.

    Each epoch is a permutation of the data set seeded by (seed, epoch); global batch i is its
    slice [i*B, (i+1)*B) and rank r takes the r-th contiguous part of it. So W ranks together
    see exactly the batches of one process with the global batch size, and `start_batch`
    resumes in the middle of an epoch without replaying the data.

    Iterating yields from (epoch, start_batch) on, epoch after epoch, without end: one loader
    iterator serves the whole run, so the workers prefetch across epoch boundaries instead of
    starting again empty at each epoch.
    """

    def __init__(self, size: int, global_batch: int, rank: int = 0, world: int = 1,
                 seed: int = 0):
        if global_batch % world:
            raise ValueError(f"SOLVER.BATCH_SIZE {global_batch} is not divisible by the number "
                             f"of processes {world}")
        self.size, self.global_batch, self.rank, self.world = size, global_batch, rank, world
        self.local_batch = global_batch // world
        self.seed, self.epoch, self.start_batch = seed, 0, 0
        self.batches_per_epoch = size // global_batch  # the last partial batch is dropped

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_batches(self, epoch: int, start_batch: int = 0):
        """This rank's batches of one epoch, from `start_batch` on."""
        g = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        for b in range(start_batch, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.local_batch
            yield [(i, epoch) for i in perm[start:start + self.local_batch]]

    def __iter__(self):
        yield from self.epoch_batches(self.epoch, self.start_batch)
        for epoch in itertools.count(self.epoch + 1):
            yield from self.epoch_batches(epoch)
