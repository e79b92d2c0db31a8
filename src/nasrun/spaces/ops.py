"""Candidate operations shared by the cell spaces."""

import torch
from torch import nn


class ReLUConvBN(nn.Module):
    """ReLU → Conv → BN. By default (AutoDL, NB201) the conv has a bias exactly when the BN is not affine;
    the DARTS-space ops pass ``bias=False`` (quark0 convs never have one)."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation=1, affine=True, track_running_stats=True, bias=None):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel, stride, padding, dilation=dilation, bias=not affine if bias is None else bias),
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


class HardPath:
    """GDAS's sampled path for one cell type: ``weights`` [E, K], one-hot in value but carrying the gradient of
    the relaxed sample (straight-through), and ``index``, the sampled op of each edge (host ints)."""

    def __init__(self, weights, index):
        self.weights, self.index, self._terms = weights, list(index), None

    def detach(self):
        return HardPath(self.weights.detach(), self.index)

    def edge_terms(self):
        """Per edge ``(w row, w_k, Σ_{o≠k} w_o)`` of :func:`mixed_hard`, computed once for every cell of the type (a
        handful of kernels per step instead of a handful per edge)."""
        if self._terms is None:
            k = torch.tensor(self.index, device=self.weights.device).unsqueeze(1)
            w_k = self.weights.gather(1, k).squeeze(1)
            rest = self.weights.sum(1) - w_k
            self._terms = list(zip(self.weights.unbind(0), w_k.unbind(0), rest.unbind(0)))
        return self._terms


def mixed_hard(ops, x, w, k, terms=None):
    """GDAS edge (Dong & Yang 2019; AutoDL ``forward_gdas``): w_k·op_k(x) + Σ_{o≠k} w_o, where the w_o (o ≠ k) are
    zero-valued scalars that still carry gradient to α; only op k runs. ``terms``: ``(w_k, Σ_{o≠k} w_o)`` when
    already computed (:meth:`HardPath.edge_terms`)."""
    w_k, rest = terms if terms is not None else (w[k], w.sum() - w[k])
    return ops[k](x) * w_k + rest


def add_all(tensors):
    """Σ of the tensors, without the ``0 +`` kernel of Python's ``sum``."""
    out = None
    for t in tensors:
        out = t if out is None else out + t
    return out


def mixed(ops, x, w, active=None):
    """Σ_o w_o · o(x): the DARTS mixed operation for one edge; ``active`` lists the op indices to run (the others
    were pruned and have weight 0: DrNAS's progressive search does not compute them)."""
    out = None
    for k in range(len(ops)) if active is None else active:
        y = ops[k](x) * w[k]
        out = y if out is None else out + y
    return out


def partial_edge(x, k, mix, w, pool=None, scale=None):
    """PC-DARTS's partial channels (K = ``k``): ``mix`` runs on the first C/K channels of x, the rest bypass it
    (through ``pool`` when the mixed op halves the resolution), scaled by ``scale`` (the edge weight alone: GAEA
    PC-DARTS) or else the edge's weight sum (1, or PC-DARTS's β̂ when folded into w; a softmax row's sum passes α no
    gradient), and the channels are shuffled; K = 1 is the plain mixed op."""
    if k == 1:
        return mix(x)
    out, rest = mix(x[:, :x.shape[1] // k]), x[:, x.shape[1] // k:]
    if out.shape[-1] != x.shape[-1]:
        rest = pool(rest)
    return channel_shuffle(torch.cat([out, (w.sum() if scale is None else scale) * rest], dim=1), k)


def channel_shuffle(x, groups):
    """Interleave ``groups`` channel groups (ShuffleNet; PC-DARTS after its partial-channel concat)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)



# --- DARTS-space operations (quark0/darts `operations.py`; methods.md §1.1). Convs have no bias. ---

class FactorizedReduce(nn.Module):
    """ReLU, two 1×1 stride-2 convs to C_out/2 on x and on x shifted by one pixel, concat, BN."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class SepConv(nn.Module):
    """Two stacked [ReLU, depthwise k×k, 1×1, BN] blocks; the first carries the stride."""

    def __init__(self, C_in, C_out, kernel, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, kernel, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False), nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False), nn.Conv2d(C_in, C_in, kernel, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """ReLU, dilated depthwise k×k, 1×1, BN."""

    def __init__(self, C_in, C_out, kernel, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False), nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Noise(nn.Module):
    """RobustDARTS S4 ``noise`` op: fresh N(0,1) of the output shape; the input gets no gradient."""

    def __init__(self, stride=1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x)


DARTS_OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: Noise(stride),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}
