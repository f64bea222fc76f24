"""detectron2 extensions for self-supervised backbones: the C4 ROI head with an extra norm, and
the FCN semantic-segmentation head of MoCo's VOC protocol."""

from typing import Dict

import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    """C4 ROI heads with one more normalisation layer after res5.

    Self-supervised backbones are fine-tuned with trainable (Sync)BN everywhere; the features
    res5 hands to the box and mask predictors are normalised too (the MoCo / InfoCL detection
    protocol). Its parameters are new: they are the "extra res5 norm" a converted checkpoint
    does not have.
    """

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(cfg)
        res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
        return res5, out_channels


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(nn.Module):
    """MoCo's semantic-segmentation head (He et al., CVPR 2020, appendix): on one backbone
    feature (the R50 with dilated res5, stride 16), two 3x3 convolutions of CONVS_DIM channels
    with norm, ReLU and dilation DILATION, then a 1x1 classifier. The logits are upsampled by
    COMMON_STRIDE (bilinear) to the input size; the loss is the per-pixel cross entropy, pixels
    of IGNORE_VALUE (VOC's boundaries, the padding of crops) left out."""

    @configurable
    def __init__(self, input_shape: Dict[str, ShapeSpec], *, in_feature: str, num_classes: int,
                 conv_dims: int, dilation: int, norm: str, common_stride: int,
                 ignore_value: int, loss_weight: float):
        super().__init__()
        self.in_feature, self.common_stride = in_feature, common_stride
        self.ignore_value, self.loss_weight = ignore_value, loss_weight
        layers, channels = [], input_shape[in_feature].channels
        for _ in range(2):
            layers.append(Conv2d(channels, conv_dims, 3, padding=dilation, dilation=dilation,
                                 bias=not norm, norm=get_norm(norm, conv_dims),
                                 activation=nn.ReLU()))
            nn.init.kaiming_normal_(layers[-1].weight, mode="fan_out", nonlinearity="relu")
            channels = conv_dims
        self.convs = nn.Sequential(*layers)
        self.predictor = Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {"input_shape": input_shape, "in_feature": head.IN_FEATURES[0],
                "num_classes": head.NUM_CLASSES, "conv_dims": head.CONVS_DIM,
                "dilation": head.DILATION, "norm": head.NORM,
                "common_stride": head.COMMON_STRIDE, "ignore_value": head.IGNORE_VALUE,
                "loss_weight": head.LOSS_WEIGHT}

    def forward(self, features, targets=None):
        """Training: (None, {"loss_sem_seg": ...}); inference: (N x C x H x W logits, {})."""
        logits = F.interpolate(self.predictor(self.convs(features[self.in_feature])),
                               scale_factor=self.common_stride, mode="bilinear",
                               align_corners=False)
        if not self.training:
            return logits, {}
        # the padded input is at most one stride smaller than the upsampled logits
        logits = logits[..., :targets.shape[-2], :targets.shape[-1]]
        loss = F.cross_entropy(logits.float(), targets, reduction="mean",
                               ignore_index=self.ignore_value)
        return None, {"loss_sem_seg": loss * self.loss_weight}
