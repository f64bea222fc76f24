"""The linear probes' protocols (`PROTOCOLS`), value for value with their sources; plain data,
so the planner reads them without importing torch (linear.py trains them):

ours             features computed once (centre crop), standardised with the training set's
                 statistics, batch 256, SGD 0.01, cosine stepped per batch, the weights from
                 N(0, 0.01); the top-1 of the *last* epoch is the result. For speed: the papers
                 (except InfoCL on CIFAR) train on augmented images through the frozen encoder;
                 precomputed features make a 100-epoch probe take seconds and land within about
                 a point of that.
infocl           InfoCL's eval_lr.py (CIFAR-10, STL-10): features computed once, raw, batch 128
                 (the last partial batch dropped), SGD lr 0.01 with momentum 0.9, x0.1 at epochs
                 60 and 80, PyTorch's default initialisation of the layer.
infocl_imagenet  InfoCL's eval_lr_imagenet.py: the layer trained on augmented images through the
                 frozen encoder every epoch (random resized crop + flip, so features cannot be
                 computed once; image_probe.py), raw features, batch 256 (drop last), SGD lr 0.3
                 with momentum 0.9 and no weight decay, a cosine over the epochs stepped once per
                 epoch (CosineAnnealingLR), weights from N(0, 0.01), biases 0; tested at 256 ->
                 224 centre crop.
InfoCL reports the *best* test epoch; both last and best are returned: say which one a number is.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Protocol:
    standardize: bool  # features standardised with the training set's mean and std
    batch_size: int
    lr: float
    schedule: str  # "cosine_per_step", "multistep_60_80", "cosine_per_epoch"
    drop_last: bool  # the last partial batch of an epoch dropped
    init: str  # "normal": weights N(0, 0.01), biases 0; "pytorch": nn.Linear's own
    on_images: bool  # trained on augmented images each epoch (image_probe.py)
    source: str


PROTOCOLS = {
    "ours": Protocol(True, 256, 0.01, "cosine_per_step", False, "normal", False, "ours"),
    "infocl": Protocol(False, 128, 0.01, "multistep_60_80", True, "pytorch", False,
                       "InfoCL SimCLR/eval_lr.py:15 (batch), :104-109 (drop_last), :133-135 "
                       "(layer, SGD 0.01, MultiStepLR [60, 80])"),
    "infocl_imagenet": Protocol(False, 256, 0.3, "cosine_per_epoch", True, "normal", True,
                                "InfoCL SimCLR/eval_lr_imagenet.py:15-16 (batch 256, 100 "
                                "epochs), :26 (lr 0.3), :80-90 (augmentation), :111-116 "
                                "(shuffle, drop_last), :140-144 (init, SGD, cosine)"),
}
