"""torchvision ResNet-18/50 as an encoder that can also return pooled intermediate stages."""

import torch
from torch import nn

STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier.

    The children keep torchvision's names (conv1, bn1, layer1..4), so `state_dict()` has
    torchvision's keys minus `fc.*`: what the detectron2 converter and `torchvision.models`
    both read. `forward(x, taps)` returns the pooled last stage `h` and, for each stage named in
    `taps`, its globally pooled output (InfoCL's LBE taps layer2-4).
    """

    def __init__(self, arch: str = "resnet50", cifar_stem: bool = False, stem_stride: int = 1,
                 init: str = "torchvision"):
        super().__init__()
        # imported here: the pipeline's planner imports the methods for their config keys and
        # should not pay torchvision's import (about 2 s a process) to read a config
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None)
        if cifar_stem:  # 32-64 px images: keep the resolution the ImageNet stem would divide by 4
            # a 3x3 convolution, no max-pool; stride 1 (CIFAR) or 2 (InfoCL's STL-10 at 64 px)
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stem_stride, padding=1, bias=False)
            net.maxpool = nn.Identity()
        if init == "pytorch":  # each layer's own default (Kaiming-uniform convolutions)
            for module in net.modules():
                if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                    module.reset_parameters()
        for name, child in net.named_children():
            if name != "fc":
                self.add_module(name, child)
        self.out_dim = net.fc.in_features
        self.stage_dims = {name: _stage_channels(getattr(self, name)) for name in STAGES}

    def forward(self, x: torch.Tensor, taps=()):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        pooled = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            if name in taps:
                pooled[name] = torch.flatten(self.avgpool(x), 1)
        h = torch.flatten(self.avgpool(x), 1)
        return (h, pooled) if taps else h


def build_encoder(cfg) -> ResNetEncoder:
    """The encoder of MODEL.ARCH with MODEL.CIFAR_STEM, MODEL.STEM_STRIDE and MODEL.INIT."""
    return ResNetEncoder(cfg.MODEL.ARCH, cfg.MODEL.CIFAR_STEM, cfg.MODEL.STEM_STRIDE,
                         cfg.MODEL.INIT)


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
