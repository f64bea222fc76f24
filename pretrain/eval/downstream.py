"""Linear evaluation of a frozen encoder on a downstream classification set (pretrain/eval/sets),
by one of two protocols; the features of each (encoder, set, split, image size) are computed
once and kept as plain arrays, reused by every seed and regularisation value.

infocl     InfoCL's eval_lr.py, value for value: each image resized to size x size (bilinear;
           32 px for CIFAR-pretrained encoders, 64 px for STL-pretrained, CIFAR-10/100 at 32 and
           STL-10 at 96 whatever the encoder: eval_lr.py:93-108), normalised with the set's own
           mean and std (data_statistics.py), a linear layer as wide as their head
           (get_data_nclass: Aircraft's has 102 outputs for 100 variants) trained on the raw
           features with SGD lr 0.01, momentum 0.9, batch 128 (last partial batch dropped), 100
           epochs, x0.1 at 60 and 80 (eval_lr.py:110-140; pretrain/eval/linear.py's "infocl").
           Reported: the last epoch's test top-1 and, marked, the best test epoch's (what the
           paper reports: selection on the test set).
kornblith  the many-shot protocol of Kornblith et al. 2019 (followed by SimCLR and Ericsson et
           al. 2021): 224 px centre crops (shorter side resized to 224, bilinear) normalised as
           the encoder was trained, multinomial logistic regression on the raw features, the L2
           strength chosen on the validation split among 45 values log-spaced in [1e-6, 1e5],
           then refit on train+val and measured on test with the set's metric (top-1; mean
           per-class accuracy for Aircraft, Pets, Caltech-101, Flowers; 11-point mAP for
           VOC2007). Solved by torch's L-BFGS (strong-Wolfe line search), full batch, minimising
           mean cross-entropy + lambda/2 |W|^2 (the bias free; scikit-learn's C = 1/(lambda n)),
           warm-started from the neighbouring lambda: no new dependency, the features stay where
           they are (the GPU where there is one), and the sweep's 45 fits share their way.
"""

import hashlib
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ssl2det.errors import ConfigError
from ssl2det.io import atomic_write

from .linear import train_linear_probe
from .sets import SETS

PROTOCOLS = ("infocl", "kornblith")
INFOCL_BATCH = 128  # eval_lr.py's logistic_batch_size
L2_VALUES = np.logspace(-6, 5, 45)  # Kornblith et al. 2019: 45 values, log-spaced


def infocl_size(set_name: str, pretrain_size: int) -> int:
    """eval_lr.py's image size: CIFAR-10/100 at 32, STL-10 at 96, every other set at 64 for
    STL-pretrained encoders (pretrained at 64 px) and 32 for CIFAR-pretrained ones."""
    if set_name in ("cifar10", "cifar100"):
        return 32
    if set_name == "stl10":
        return 96
    return 64 if pretrain_size >= 64 else 32


class _Images(torch.utils.data.Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.transform(self.samples.open(i)), i


def infocl_transform(size: int, mean, std):
    """transforms.Resize((size, size)) (PIL bilinear), ToTensor, Normalize(mean, std)."""
    mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def transform(image):
        array = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
        return (torch.from_numpy(array).permute(2, 0, 1) - mean) / std
    return transform


def kornblith_transform(size: int, mean, std):
    from torchvision.transforms import v2

    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def cached_features(encoder, samples, transform, key: dict, folder: str, device,
                    workers: int = 0, batch_size: int = 128):
    """(features, labels) of `samples` through the frozen `encoder`: read from `folder` where an
    extraction of the same `key` was kept, else computed and kept there (FEATURES.npy, LABELS.npy
    and KEY.json; no pickle, written atomically: a killed extraction leaves nothing half)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = os.path.join(folder, f"{key['set']}-{key['split']}-{key['size']}px-{digest}")
    if all(os.path.isfile(f"{stem}.{part}") for part in ("features.npy", "labels.npy")):
        return (torch.from_numpy(np.load(f"{stem}.features.npy", allow_pickle=False)),
                torch.from_numpy(np.load(f"{stem}.labels.npy", allow_pickle=False)))
    loader = torch.utils.data.DataLoader(_Images(samples, transform), batch_size=batch_size,
                                         num_workers=workers, shuffle=False)
    was_training = encoder.training
    encoder.eval()
    parts = []
    with torch.no_grad():
        for images, _ in loader:
            parts.append(encoder(images.to(device)).float().cpu())
    encoder.train(was_training)
    features = torch.cat(parts).numpy()
    labels = np.asarray(samples.labels, dtype=np.int64)
    os.makedirs(folder, exist_ok=True)
    for part, array in (("features", features), ("labels", labels)):
        atomic_write(f"{stem}.{part}.npy", lambda f, a=array: np.save(f, a, allow_pickle=False))
    atomic_write(f"{stem}.key.json", lambda f: f.write(json.dumps(key, indent=1).encode()))
    return torch.from_numpy(features), torch.from_numpy(labels)


# --- metrics ----------------------------------------------------------------------------------

def score(metric: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The set's metric (%) of `logits` against `labels` (multi-label: 1 present, 0 absent, -1
    difficult and left out)."""
    if metric == "map11":
        return 100 * float(np.mean([_ap11(logits[:, c], labels[:, c])
                                    for c in range(labels.shape[1])]))
    predicted = logits.argmax(1)
    if metric == "mean_per_class":
        return 100 * float(np.mean([(predicted[labels == c] == c).float().mean().item()
                                    for c in labels.unique()]))
    return 100 * (predicted == labels).float().mean().item()


def _ap11(scores, truth) -> float:
    """PASCAL VOC2007's 11-point interpolated average precision of one class."""
    keep = truth >= 0
    scores, truth = scores[keep], truth[keep]
    order = torch.argsort(scores, descending=True)
    hits = truth[order].float()
    tp, fp = hits.cumsum(0), (1 - hits).cumsum(0)
    recall = tp / max(1.0, hits.sum().item())
    precision = tp / (tp + fp)
    return float(np.mean([(precision[recall >= t].max().item() if (recall >= t).any() else 0.0)
                          for t in np.linspace(0, 1, 11)]))


# --- the protocols ----------------------------------------------------------------------------

def fit_logistic(features, labels, l2: float, classes: int, multilabel=False, start=None,
                 max_iter: int = 500):
    """(weights, bias) minimising mean cross-entropy (multi-label: binary, over the known
    entries) + l2/2 |W|^2 by L-BFGS, from `start` (warm start) or zeros."""
    d = features.shape[1]
    w = (start[0].clone() if start else torch.zeros(d, classes)).requires_grad_(True)
    b = (start[1].clone() if start else torch.zeros(classes)).requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-7, tolerance_change=1e-10,
                            line_search_fn="strong_wolfe")
    known = labels >= 0 if multilabel else None

    def closure():
        opt.zero_grad()
        logits = features @ w + b
        if multilabel:
            loss = F.binary_cross_entropy_with_logits(logits[known], labels[known].float())
        else:
            loss = F.cross_entropy(logits, labels)
        loss = loss + l2 / 2 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


def kornblith(train, val, trainval, test, metric: str, classes: int, multilabel=False,
              progress=None) -> dict:
    """The sweep on (train, val), the refit on trainval, the test metric."""
    best, start, chosen = None, None, None
    for i, l2 in enumerate(sorted(L2_VALUES, reverse=True)):  # strong to weak: warm starts
        start = fit_logistic(*train, l2, classes, multilabel, start)
        value = score(metric, val[0] @ start[0] + start[1], val[1])
        if best is None or value > best:
            best, chosen = value, (float(l2), start)
        if progress:
            progress(i + 1, value)
    l2, start = chosen
    w, b = fit_logistic(*trainval, l2, classes, multilabel, start)
    logits = test[0] @ w + b
    top1 = None if multilabel else score("top1", logits, test[1])
    return {"l2": l2, "val_metric": best, "metric_value": score(metric, logits, test[1]),
            "top1_last": top1, "top1_best": None}


def evaluate(encoder, cfg, set_name: str, root: str, protocol: str, feature_dir: str, device,
             seed: int = 0, expected_classes: int = 0, size: int = 0, encoder_key=None,
             progress=None) -> dict:
    """The result (the module docstring); the features are computed once per encoder, set,
    split and size, and kept in `feature_dir` for every later seed."""
    if set_name not in SETS:
        raise ConfigError(f"--dataset {set_name!r} is not one of {', '.join(sorted(SETS))}")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    set_ = SETS[set_name]
    if protocol == "infocl" and set_.infocl_stats is None:
        raise ConfigError(f"{set_.title} is not one of InfoCL's transfer sets (it has no "
                          "statistics in data_statistics.py); use --protocol kornblith")
    if protocol == "infocl":
        size = size or infocl_size(set_name, cfg.INPUT.SIZE)
        transform, splits = infocl_transform(size, *set_.infocl_stats), ("train", "test")
    else:
        size = size or 224
        transform = kornblith_transform(size, tuple(cfg.INPUT.MEAN), tuple(cfg.INPUT.STD))
        splits = ("train", "val", "trainval", "test")
    # every split read and checked before any feature is computed: a bad root writes nothing
    samples = {split: set_.samples(root, split, protocol, expected_classes) for split in splits}
    if protocol == "infocl" and len(samples["train"]) < INFOCL_BATCH:
        raise ConfigError(f"{set_.title} at {root}: {len(samples['train'])} training images, "
                          f"fewer than one batch of {INFOCL_BATCH}, and the infocl protocol drops "
                          "the last partial batch (eval_lr.py: drop_last): no step would be "
                          "taken; use protocol kornblith for a set this small")
    data = {}
    for split in splits:
        key = {"encoder": encoder_key, "set": set_name, "root": os.path.abspath(root),
               "split": split, "protocol": protocol, "size": size}
        data[split] = cached_features(encoder, samples[split], transform, key, feature_dir,
                                      device, cfg.DATA.NUM_WORKERS)
    classes = expected_classes or set_.classes or len(np.unique(data["train"][1].numpy()))
    base = {"dataset": set_name, "protocol": protocol, "size": size, "metric": set_.metric,
            "n_train": len(data["train"][1]), "n_test": len(data["test"][1]),
            "n_classes": classes}
    if protocol == "infocl":
        probe = train_linear_probe(*data["train"], *data["test"], epochs=100, protocol="infocl",
                                   seed=seed, progress=progress, num_classes=set_.infocl_outputs)
        out = {"top1_last": probe.last, "top1_best": probe.best, "best_epoch": probe.best_epoch,
               "metric": "top1", "metric_value": probe.last}
    else:  # (deterministic: L-BFGS from zeros; the seed changes nothing)
        out = kornblith(data["train"], data["val"], data["trainval"], data["test"],
                        set_.metric, classes, set_.multilabel, progress)
        out["n_val"] = len(data["val"][1])
    return {**base, **out, "seed": seed}
