"""Candidate operations shared by the cell spaces."""

import torch
from torch import nn


class ReLUConvBN(nn.Module):
    """ReLU → Conv → BN. Following AutoDL, the conv has a bias exactly when the BN is not affine."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation=1, affine=True, track_running_stats=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride, padding, dilation=dilation, bias=not affine),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x):
        return self.op(x)


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (strided input subsampled first)."""

    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    """``skip_connect`` at stride 1."""

    def forward(self, x):
        return x


class Pooling(nn.Module):
    """NAS-Bench-201 ``avg_pool_3x3`` (no BN after the pool)."""

    def __init__(self, stride=1):
        super().__init__()
        self.op = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.op(x)


def mixed(ops, x, w):
    """Σ_o w_o · o(x): the DARTS mixed operation for one edge."""
    out = None
    for k, op in enumerate(ops):
        y = op(x) * w[k]
        out = y if out is None else out + y
    return out


__all__ = ["ReLUConvBN", "Zero", "Identity", "Pooling", "mixed", "torch"]
