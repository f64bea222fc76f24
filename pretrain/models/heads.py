"""Projector and predictor heads."""

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, bn: bool = True,
        last_bn: bool = False) -> nn.Sequential:
    """Linear(+BN)+ReLU hidden layers, then a Linear output (optionally an affine-free BN).

    SimCLR/BYOL/Barlow Twins heads have BN in the hidden layers; MoCo v2's has none.
    """
    layers, dim = [], in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=not bn)]
        layers += [nn.BatchNorm1d(hidden_dim)] if bn else []
        layers += [nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers += [nn.Linear(dim, out_dim, bias=not last_bn)]
    if last_bn:
        layers += [nn.BatchNorm1d(out_dim, affine=False)]
    return nn.Sequential(*layers)
