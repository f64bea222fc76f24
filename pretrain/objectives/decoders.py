"""Decoders from the pooled encoder feature back to an image (InfoCL RC, MRCL)."""

from torch import nn

# InfoCL's decoders (modules/recons.py of their code, ReCon32/64/224): input side -> (channels of
# the seed tensor, its side, channels of the x2 transposed-convolution stages, whether the last
# layer upsamples too).
DECODER_SHAPES = {
    32: (64, 4, (256, 128, 64), False),
    64: (128, 4, (128, 128, 128, 128), False),
    224: (64, 7, (128, 128, 128, 64), True),
}


def _up(cin, cout):
    return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ImageDecoder(nn.Module):
    """Linear (no bias) + BN + ReLU to a small seed tensor, then x2 transposed convolutions (3x3,
    BN, ReLU); the last layer maps to 3 channels, a 3x3 transposed convolution with bias at
    stride 1 (32, 64 px) or stride 2 (224 px: 7 -> 224 takes five x2 stages). No output
    activation: the target is the normalised view."""

    def __init__(self, in_dim: int, size: int):
        super().__init__()
        if size not in DECODER_SHAPES:
            raise ValueError(f"no reconstruction decoder for INPUT.SIZE {size}; InfoCL defines "
                             f"them for {sorted(DECODER_SHAPES)} px")
        channels, side, stages, last_upsamples = DECODER_SHAPES[size]
        self.seed_shape = (channels, side, side)
        self.fc = nn.Sequential(nn.Linear(in_dim, channels * side * side, bias=False),
                                nn.BatchNorm1d(channels * side * side), nn.ReLU(inplace=True))
        layers, cin = [], channels
        for cout in stages:
            layers += _up(cin, cout)
            cin = cout
        stride = 2 if last_upsamples else 1
        layers.append(nn.ConvTranspose2d(cin, 3, 3, stride=stride, padding=1,
                                         output_padding=stride - 1))
        self.net = nn.Sequential(*layers)

    def forward(self, h):
        return self.net(self.fc(h).view(h.shape[0], *self.seed_shape))
