"""detectron2 extensions for self-supervised backbones."""

from detectron2.layers import get_norm
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads


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
