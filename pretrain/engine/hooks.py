"""Hooks of the pretraining loop that detectron2 does not have: progress bar and kNN monitor."""

import logging
import sys
import time

import torch
from detectron2.engine import HookBase
from tqdm import tqdm

from ssl2det.distributed import is_main_process

from ..data import build_eval_loader, image_folder
from ..eval.features import extract_features, gather_features, shard
from ..eval.knn import knn_top1

logger = logging.getLogger(__name__)


class ProgressBar(HookBase):
    """tqdm bar on rank 0: iterations, ETA, two-view samples/s and the last logged loss."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.bar = None

    def before_train(self):
        if not is_main_process():
            return
        t = self.trainer
        self.bar = tqdm(total=t.max_iter, initial=t.start_iter, desc="pretrain", unit="it",
                        dynamic_ncols=True, mininterval=1 if sys.stderr.isatty() else 30)
        self._last = (time.perf_counter(), t.start_iter)

    def after_step(self):
        if self.bar is None:
            return
        self.bar.update(1)
        t = self.trainer
        if t.is_log_step():
            now = time.perf_counter()
            samples = (t.iter + 1 - self._last[1]) * self.batch_size / (now - self._last[0])
            self._last = (now, t.iter + 1)
            latest = t.storage.latest()
            loss = latest["loss"][0] if "loss" in latest else float("nan")  # all steps skipped
            self.bar.set_postfix(epoch=t.epoch, loss=f"{loss:.4f}", lr=f"{latest['lr'][0]:.3g}",
                                 samples_s=f"{samples:.0f}", refresh=False)

    def after_train(self):
        if self.bar is not None:
            self.bar.close()


class KNNMonitor(HookBase):
    """Weighted kNN top-1 of the encoder's features on DATA.VAL_ROOT, with KNN.TRAIN_ROOT (or
    DATA.ROOT; at most KNN.MAX_TRAIN_IMAGES, a fixed random subset) as the memory bank: every
    KNN.PERIOD_EPOCHS epochs and at the end. Logged as `knn_top1`."""

    def __init__(self, cfg, encoder, device, channels_last: bool = False):
        self.cfg, self.encoder, self.device = cfg, encoder, device
        self.channels_last = channels_last  # the run's memory format (ssl2det.precision)
        self.results = []

    def _should_run(self):
        t = self.trainer
        done = t.iter + 1
        return done == t.max_iter or done % (t.iters_per_epoch * self.cfg.KNN.PERIOD_EPOCHS) == 0

    def after_step(self):
        if self._should_run():
            top1 = self.evaluate()
            self.trainer.storage.put_scalar("knn_top1", top1, smoothing_hint=False)
            self.results.append((self.trainer.iter, top1))
            logger.info(f"kNN top-1 after iteration {self.trainer.iter + 1}: {top1:.2f}%")

    def before_train(self):
        cfg = self.cfg
        self.bank_root = cfg.KNN.TRAIN_ROOT or cfg.DATA.ROOT
        n = len(image_folder(cfg, self.bank_root))
        if cfg.KNN.MAX_TRAIN_IMAGES and n > cfg.KNN.MAX_TRAIN_IMAGES:
            g = torch.Generator().manual_seed(cfg.SEED)
            chosen = torch.randperm(n, generator=g)[:cfg.KNN.MAX_TRAIN_IMAGES]
            self.bank = chosen.sort().values.tolist()
        else:
            self.bank = list(range(n))
        self.test_size = len(image_folder(cfg, cfg.DATA.VAL_ROOT))

    def evaluate(self) -> float:
        cfg = self.cfg
        train = self._features(self.bank_root, [self.bank[i] for i in shard(len(self.bank))])
        test = self._features(cfg.DATA.VAL_ROOT, shard(self.test_size))
        return knn_top1(*train, *test, k=cfg.KNN.K, temperature=cfg.KNN.TEMPERATURE)

    def _features(self, root, indices):
        loader = build_eval_loader(self.cfg, root, indices)
        return gather_features(*extract_features(self.encoder, loader, self.device,
                                                 self.channels_last))
