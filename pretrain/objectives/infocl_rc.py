"""InfoCL RC (Wang et al., CVPR 2022): keep information about the input in the representation
by reconstructing each augmented view from its pooled feature h (before the projector).

    loss_rc = WEIGHT * [MSE(dec(h1), x1) + MSE(dec(h2), x2)],  x = the normalised view the
    encoder saw. WEIGHT (lambda): SimCLR CIFAR/STL 1, SimCLR ImageNet 0.1, BYOL 0.1, Barlow 1.
"""

from fvcore.common.config import CfgNode as CN

from ..losses import reconstruction_mse
from .base import Objective, register_objective
from .decoders import ImageDecoder


def add_infocl_rc_config(cfg):
    cfg.INFOCL_RC = CN()
    cfg.INFOCL_RC.WEIGHT = 1.0


@register_objective("infocl_rc", add_infocl_rc_config)
class InfoCLReconstruction(Objective):
    # InfoCL's decoder is outside its DataParallel (SimCLR/main.py:110-112): its BN sees the
    # whole batch, while the encoder's sees a GPU's share
    global_batch_norm = True

    def __init__(self, cfg, feature_dim):
        super().__init__(cfg, feature_dim)
        self.decoder = ImageDecoder(feature_dim, cfg.INPUT.SIZE)
        self.weight = cfg.INFOCL_RC.WEIGHT

    def forward(self, features):
        loss = sum(reconstruction_mse(self.decoder(h.float()), x)
                   for h, x in zip(features.h, features.views))
        return {"loss_rc": self.weight * loss}
