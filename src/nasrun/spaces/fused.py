"""Fused mixed operations (perf.md §3): the per-op cells' function, computed with far fewer kernels.

The per-op cells (one module per edge and candidate op, summed edge by edge) stay the readable
reference and own every parameter; this module only evaluates them differently. Per *source* state,
not per edge:

- ReLU once (every conv op of every outgoing edge starts with ReLU of the same tensor);
- the outgoing edges' convolutions of one op as one convolution (NB201: one plain conv; DARTS: depthwise
  stages as one grouped conv over the edges' copies of the input, pointwise stages as one conv with
  ``groups = edges``), their filters stored side by side (:func:`pack_parameters`) and read as one view;
- one BatchNorm call over the edges' channels (BN is per channel, so this is exact), its running
  statistics a view of the per-edge buffers, updated in place;
- parameter-free ops (skip, pools, and the DARTS pools' BN in training mode) once per source;
- ``none`` never computed (its α still gets the exact gradient, through the softmax);
- the mixing: a conv op's weight is its final BatchNorm's per-channel scale (no kernel of its own, the
  gradient from BN's backward), and the ops whose output is the same on every edge are mixed for all
  outgoing edges by one batched matmul.

Parameter names, shapes and BN buffers are those of the per-op modules, so checkpoints, op masking and
discretisation are unchanged, and ``set_fused(net, False)`` switches back to the reference.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import batch_norm, batch_var_mean
from .ops import DilConv, FactorizedReduce, Identity, Noise, Pooling, ReLUConvBN, SepConv, Zero


def set_fused(module, flag):
    """Switch every cell of ``module`` between the fused (True) and the per-op reference forward (False)."""
    for m in module.modules():
        if isinstance(m, FusedCellMixin):
            m.fused = bool(flag)
    return module


def compile_cells(module):
    """``torch.compile`` each search cell in place (regional compilation, perf.md §3.3), not the whole supernet."""
    for m in module.modules():
        if isinstance(m, FusedCellMixin):
            m.compile()
    return module


class FusedCellMixin:
    """Marks a cell with a fused forward; ``fused`` picks it (default on). Its fused terms' tensors are packed
    (:func:`pack_parameters`) again after every ``to()`` / dtype / memory-format change and in a deep copy (which
    clones each parameter on its own)."""

    fused = True

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        return pack_parameters(self)

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return pack_parameters(new)


def fused_bn(x, bns, scale=None):
    """``BatchNorm2d`` of several modules over their concatenated channels, with nn.BatchNorm2d semantics.

    ``x`` holds the modules' channels one after the other; running statistics (where tracked) are read
    from and written back to each module, and ``num_batches_tracked`` counts up as in the module. ``scale``
    (per channel) multiplies the output: a mixed op's weight folded into the BN's affine transform, so the
    weighting costs no kernel of its own and its gradient comes out of the BN's backward.
    """
    bn = bns[0]
    if bn.momentum is None:
        raise ValueError("fused BatchNorm needs a fixed momentum")
    track = bn.track_running_stats
    batch_stats = bn.training or not track
    weight = bias = None
    if bn.affine:
        weight, bias = _cat([b.weight for b in bns]), _cat([b.bias for b in bns])
        if scale is not None:
            weight, bias = weight * scale, bias * scale
    elif scale is not None:
        weight = scale
    if not track:
        return batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
    means, variances = [b.running_mean for b in bns], [b.running_var for b in bns]
    rm, rv = _cat(means), _cat(variances)
    y = batch_norm(x, rm, rv, weight, bias, batch_stats, bn.momentum, bn.eps)
    if bn.training:
        with torch.no_grad():
            if len(bns) > 1 and not (_shares_memory(rm, means) and _shares_memory(rv, variances)):  # a copy: write back
                sizes = [b.num_features for b in bns]
                torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(sizes)))
                torch._foreach_copy_([b.running_var for b in bns], list(rv.split(sizes)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y


def _shares_memory(joined, tensors):
    return joined.untyped_storage().data_ptr() == tensors[0].untyped_storage().data_ptr()


def _shared_bn(x, bns):
    """The same BN-without-affine applied to one tensor on several edges (training mode): the output is
    the same on every edge, so it is computed once; each edge's running statistics get the batch's."""
    bn = bns[0]
    y = batch_norm(x, None, None, None, None, True, 0.0, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            var, mean = batch_var_mean(x)
            torch._foreach_lerp_([b.running_mean for b in bns], [mean] * len(bns), bn.momentum)
            torch._foreach_lerp_([b.running_var for b in bns], [var] * len(bns), bn.momentum)
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y


def _last_bn(op):
    """The BatchNorm that ends a conv op (the one the mixing weight folds into)."""
    return op.bn if isinstance(op, FactorizedReduce) else op.op[-1]


def pack_parameters(module):
    """Store the parameters and buffers of every fused term's member ops side by side, one block per kind of
    tensor (perf.md §3): the fused forward then reads each block as one tensor (a view) instead of concatenating
    the members' filters and BN statistics at every forward, and BN writes its running statistics straight
    into the members' buffers.

    The tensors keep their objects and names (only their storage moves), so optimisers, checkpoints and the
    per-op forward are unchanged. Call it once the module is on its device, dtype and memory format; a term
    whose members are no longer side by side (moved, pruned, swapped by ``functional_call``) is concatenated.
    """
    for plan in module.modules():
        if isinstance(plan, SourcePlan):
            for term in plan.convs:
                if len(term.modules) > 1:
                    slots = zip(*(list(m.parameters()) + list(m.buffers()) for m in term.modules))
                    for tensors in slots:
                        if tensors[0].dim() and _joined_view(tensors) is None:
                            _pack(tensors)
    return module


def _pack(tensors):
    first = tensors[0]
    memory_format = torch.channels_last if first.dim() == 4 and not first.is_contiguous() and \
        first.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    block = torch.empty((sum(t.shape[0] for t in tensors),) + first.shape[1:], dtype=first.dtype, device=first.device,
                        memory_format=memory_format)
    with torch.no_grad():
        for t, part in zip(tensors, block.split([t.shape[0] for t in tensors])):
            part.copy_(t)
            t.data = part


def _joined_view(tensors):
    """The members as one tensor along dim 0 without a copy when :func:`pack_parameters` left them side by side in
    one storage (else None)."""
    if torch.compiler.is_compiling():
        return None
    first = tensors[0]
    offset, storage, stride = first.storage_offset(), first.untyped_storage().data_ptr(), first.stride()
    for t in tensors:
        if (t.storage_offset() != offset or t.stride() != stride or t.untyped_storage().data_ptr() != storage
                or t.dtype != first.dtype or t.shape[1:] != first.shape[1:]):
            return None
        offset += t.shape[0] * stride[0]
    if first.dim() > 1 and stride[0] != first[0].numel():  # dim 0 outermost, no gaps
        return None
    shape = (sum(t.shape[0] for t in tensors),) + tuple(first.shape[1:])
    if not any(t.requires_grad for t in tensors):
        return first.detach().as_strided(shape, stride, first.storage_offset())
    return _Joined.apply(shape, *tensors)


class _Joined(torch.autograd.Function):
    """``torch.cat`` of tensors that already lie side by side in one storage: the forward is a view."""

    @staticmethod
    def forward(ctx, shape, *tensors):
        ctx.sizes = [t.shape[0] for t in tensors]
        first = tensors[0]
        return first.as_strided(shape, first.stride(), first.storage_offset())

    @staticmethod
    def backward(ctx, grad):
        return (None, *grad.split(ctx.sizes))


def _cat(tensors):
    """The members' tensors joined on dim 0: a view of their packed block, or a concatenation."""
    if len(tensors) == 1:
        return tensors[0]
    joined = _joined_view(tensors)
    return torch.cat(tensors) if joined is None else joined


def _conv(x, convs, groups=1):
    """One conv with the filters (and biases) of ``convs`` concatenated on the output channels."""
    c = convs[0]
    bias = _cat([m.bias for m in convs]) if c.bias is not None else None
    return F.conv2d(x, _cat([m.weight for m in convs]), bias, c.stride, c.padding, c.dilation, groups)


class _Term:
    """One candidate op on the outgoing edges of a source that have it.

    ``kind``: ``edges`` (one tensor per member edge, ending in a BatchNorm that takes the mixing weights as its
    per-channel scale), ``shared`` (the same tensor on every edge), ``pool_bn`` (a DARTS search pool and its BN: the
    same tensor on every edge in training) or ``noise``.
    """

    def __init__(self, kind, fn, modules, members, rows, n_edges):
        self.kind, self.fn, self.modules = kind, fn, modules
        self.members = members  # local edge indices (ascending) that have this op
        self.rows = rows        # their α rows
        self.full = len(members) == n_edges
        self.channels = _last_bn(modules[0]).num_features if kind == "edges" else None


def _term_for(modules, members, rows, n_edges):
    op = modules[0]
    if isinstance(op, Zero):
        return None
    if isinstance(op, Noise):
        return _Term("noise", None, modules, members, rows, n_edges)
    if isinstance(op, (Identity, Pooling, nn.AvgPool2d, nn.MaxPool2d)):
        return _Term("shared", _parameter_free, modules, members, rows, n_edges)
    if isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[1], nn.BatchNorm2d):  # DARTS search pool
        return _Term("pool_bn", None, modules, members, rows, n_edges)
    if isinstance(op, ReLUConvBN):
        return _Term("edges", _relu_conv_bn, modules, members, rows, n_edges)
    if isinstance(op, SepConv):
        return _Term("edges", _sep_conv, modules, members, rows, n_edges)
    if isinstance(op, DilConv):
        return _Term("edges", _dil_conv, modules, members, rows, n_edges)
    if isinstance(op, FactorizedReduce):
        return _Term("edges", _factorized_reduce, modules, members, rows, n_edges)
    raise TypeError(f"no fused form for {type(op).__name__}")


class _Source:
    """Per-forward cache of one source state: the tensor, its ReLU and its repeated ReLU."""

    def __init__(self, x):
        self.x, self._relu, self._rep = x, None, {}

    @property
    def relu(self):
        if self._relu is None:
            self._relu = F.relu(self.x)
        return self._relu

    def repeated(self, m):
        """ReLU(x) repeated ``m`` times on the channels (edge-major), the input of grouped depthwise convs."""
        if m not in self._rep:
            self._rep[m] = self.relu if m == 1 else self.relu.repeat(1, m, 1, 1)
        return self._rep[m]


def _parameter_free(src, mods):
    return mods[0](src.x)


def _relu_conv_bn(src, mods, scale):
    seqs = [m.op for m in mods]
    y = _conv(src.relu, [s[1] for s in seqs])
    return fused_bn(y, [s[2] for s in seqs], scale)


def _sep_conv(src, mods, scale):
    m = len(mods)
    seqs = [mod.op for mod in mods]
    C = seqs[0][1].in_channels
    y = _conv(src.repeated(m), [s[1] for s in seqs], groups=m * C)
    y = fused_bn(_conv(y, [s[2] for s in seqs], groups=m), [s[3] for s in seqs])
    y = _conv(F.relu(y), [s[5] for s in seqs], groups=m * C)
    return fused_bn(_conv(y, [s[6] for s in seqs], groups=m), [s[7] for s in seqs], scale)


def _dil_conv(src, mods, scale):
    m = len(mods)
    seqs = [mod.op for mod in mods]
    C = seqs[0][1].in_channels
    y = _conv(src.repeated(m), [s[1] for s in seqs], groups=m * C)
    return fused_bn(_conv(y, [s[2] for s in seqs], groups=m), [s[3] for s in seqs], scale)


def _factorized_reduce(src, mods, scale):
    # conv_1 (1×1, stride 2) reads pixel (2h, 2w), conv_2 the one at (2h+1, 2w+1): one 2×2 stride-2 conv whose
    # filters are zero but at tap (0,0) for the first half of each edge's channels and (1,1) for the second.
    w1 = _cat([m.conv_1.weight for m in mods]).unflatten(0, (len(mods), -1))
    w2 = _cat([m.conv_2.weight for m in mods]).unflatten(0, (len(mods), -1))
    w = torch.cat([F.pad(w1, (0, 1, 0, 1)), F.pad(w2, (1, 0, 1, 0))], dim=1).flatten(0, 1)
    return fused_bn(F.conv2d(src.relu, w, stride=2), [m.bn for m in mods], scale)


def _mix(weights, features):
    """``weights @ features`` (batched), in the weights' precision: under bf16 autocast a matmul would round the
    mixing weights and their gradient to bf16, where the per-op ``w · op(x)`` keeps them in float32."""
    device = features.device.type
    if not torch.is_autocast_enabled(device):
        return torch.bmm(weights, features)
    with torch.autocast(device, enabled=False):
        return torch.bmm(weights, features.to(weights.dtype))


_COLUMN_ORDER = {"shared": 0, "pool_bn": 1, "identity": 2, "noise": 3}


class SourcePlan(nn.Module):
    """The outgoing edges of one source state, their ops grouped into fused terms.

    The mixing weights reach a plan in two parts (:meth:`CellPlans.gather`): ``[n_edges, S]`` columns for the terms
    that are not per-edge convolutions (pools, skip, pool+BN, noise), and for each conv term its members' weights
    repeated over the channels, which scale its final BatchNorm. The column terms whose output is the same on
    every edge are mixed by one batched matmul.

    Args:
        rows: α rows of the outgoing edges (ascending).
        dests: destination node of each outgoing edge.
        edge_modules: ``{row: [op modules in α-column order]}``; None for an op not computed (a pruned op: its
            column gets weight 0 in the sum, as the per-op cell's ``active`` list skips it).
        num_ops: K, the α columns.
    """

    def __init__(self, rows, dests, edge_modules, num_ops):
        super().__init__()
        self.rows, self.dests, self.n = list(rows), list(dests), len(rows)
        by_type = {}
        for k, e in enumerate(self.rows):
            for col, op in enumerate(edge_modules[e]):
                if op is None:
                    continue
                key = _kind_key(op)
                by_type.setdefault(key, []).append((k, e, col, op))
        columns, convs = [], []
        for entries in by_type.values():
            members = [k for k, _, _, _ in entries]
            term = _term_for([op for _, _, _, op in entries], members, [e for _, e, _, _ in entries], self.n)
            if term is None:
                continue
            term.cols = {k: col for k, _, col, _ in entries}
            (convs if term.kind == "edges" else columns).append(term)
        # the batched mix takes the leading columns whose output is the same on every edge: pools first, then pool+BN
        # (per edge in evaluation mode), then identity (per edge under P-DARTS's skip dropout), then noise
        columns.sort(key=lambda t: _COLUMN_ORDER["identity" if isinstance(t.modules[0], Identity) else t.kind])
        self.columns, self.convs = columns, convs
        # (α row, α column or None: weight 0) in the order of the gathered weights
        self.index_cells = [(e, t.cols.get(k)) for k, e in enumerate(self.rows) for t in columns]
        self.index_cells += [(t.rows[i], t.cols[k]) for t in convs for i, k in enumerate(t.members)
                             for _ in range(t.channels)]
        self.sizes = [self.n * len(columns)] + [len(t.members) * t.channels for t in convs]
        for t, term in enumerate(columns + convs):
            self.register_buffer(f"sub{t}", torch.tensor(term.members, dtype=torch.long), persistent=False)
        self.register_buffer("row_index", torch.tensor(self.rows, dtype=torch.long), persistent=False)

    @property
    def terms(self):
        return self.columns + self.convs

    def forward(self, x, W, noise=None, skip=None):
        """``[B, n_edges, C, H, W]``: every outgoing edge's mixed-op output, weighted and summed over ops.

        ``W`` is this plan's part of :meth:`CellPlans.gather`; ``noise`` the cell's pre-drawn noise tensors by α row;
        ``skip`` P-DARTS's pre-drawn dropout scales of the skip connections by α row (the skip term is then per edge).
        """
        src = _Source(x)
        parts = W.split(self.sizes)
        cols = parts[0].view(self.n, len(self.columns))
        shared, per_edge = [], []
        for s, term in enumerate(self.columns):
            f, same = self._column(src, term, noise, skip)
            if same and len(shared) == s:
                shared.append(f)
            else:  # a shared output past the leading ones broadcasts over the edges (weight 0 where an edge lacks it)
                per_edge.append((s, f.unsqueeze(1), True) if same else (s, f, term.full))
        out = None
        if shared:
            k = len(shared)
            stacked = torch.stack(shared, 1) if k > 1 else shared[0].unsqueeze(1)
            B = stacked.shape[0]
            mix = cols if k == len(self.columns) else cols[:, :k]
            out = _mix(mix.expand(B, -1, -1), stacked.flatten(2)).view(B, self.n, *stacked.shape[2:])
        for s, f, full in per_edge:
            out = self._add(out, f, full, cols[:, s], s)
        for t, term in enumerate(self.convs):
            f = term.fn(src, term.modules, parts[t + 1]).unflatten(1, (len(term.members), -1))
            out = self._add(out, f, term.full, None, len(self.columns) + t)
        if out is None:  # only `none` leaves this source
            raise ValueError("a source whose every op is none has no fused form")
        return out

    def _column(self, src, term, noise, skip):
        """A column term's output: ``([B, C, H, W], True)`` when the same on every edge, else ``([B, members, C, H, W],
        False)``."""
        if term.kind == "shared":
            f = term.fn(src, term.modules)
            if skip is not None and isinstance(term.modules[0], Identity):
                return f.unsqueeze(1) * torch.stack([skip[e] for e in term.rows], dim=1), False
            return f, True
        if term.kind == "noise":
            return torch.stack([noise[e] for e in term.rows], dim=1), False
        pools, bns = [m[0] for m in term.modules], [m[1] for m in term.modules]
        p = pools[0](src.x)
        if bns[0].training or not bns[0].track_running_stats:
            return _shared_bn(p, bns), True
        # evaluation with running statistics: each edge normalises with its own
        return fused_bn(p.repeat(1, len(bns), 1, 1), bns).unflatten(1, (len(bns), -1)), False

    def _add(self, out, f, full, w, t):
        """``out`` plus a term ``f`` over every edge (``full``) or over its members, weighted by the column ``w`` unless
        already weighted."""
        if not full:
            members = getattr(self, f"sub{t}")
            if w is not None:
                f = f * w.index_select(0, members).view(1, -1, 1, 1, 1)
            if out is None:
                out = f.new_zeros(f.shape[0], self.n, *f.shape[2:])
            return out.index_add(1, members, f)
        if w is None:
            return f if out is None else out + f
        w = w.view(1, -1, 1, 1, 1)
        return f * w if out is None else torch.addcmul(out, f, w)


def _kind_key(op):
    """Ops of one kind on one source fuse together (same class and hyper-parameters)."""
    if isinstance(op, nn.Sequential) and len(op) == 2 and isinstance(op[1], nn.BatchNorm2d):
        return ("pool_bn", type(op[0]).__name__)
    if isinstance(op, ReLUConvBN):
        c = op.op[1]
        return ("rcb", c.kernel_size, c.stride, c.padding, c.dilation)
    if isinstance(op, (SepConv, DilConv)):
        c = op.op[1]
        return (type(op).__name__, c.kernel_size, c.stride, c.padding, c.dilation)
    if isinstance(op, (nn.AvgPool2d, nn.MaxPool2d)):
        return (type(op).__name__, op.kernel_size, op.stride, op.padding)
    return (type(op).__name__, getattr(op, "stride", None))


class CellPlans(nn.Module):
    """The :class:`SourcePlan` of every state of a cell, with one gather of all their mixing weights.

    ``run(states_so_far, j, w, acc)`` adds state j's outgoing contributions to the nodes' running sums.
    """

    def __init__(self, plans, num_ops):
        super().__init__()
        self.plans = nn.ModuleList(plans)
        cells = [c for p in plans for c in p.index_cells]
        self.needs_zero = any(col is None for _, col in cells)  # some edge lacks some op: read a zero column
        stride = num_ops + 1 if self.needs_zero else num_ops
        self.register_buffer("widx", torch.tensor([e * stride + (num_ops if col is None else col) for e, col in cells],
                                                  dtype=torch.long), persistent=False)
        self.sizes = [len(p.index_cells) for p in plans]
        # every state with outgoing edges computes something (a pruned edge keeping only `none` may leave one without)
        self.complete = all(p.terms or not p.n for p in plans)

    def __len__(self):
        return len(self.plans)

    def gather(self, w):
        """Every plan's mixing weights (:class:`SourcePlan`) from the cell's ``[E, K]`` weights, in one gather."""
        flat = (F.pad(w, (0, 1)) if self.needs_zero else w).reshape(-1)
        return flat[self.widx].split(self.sizes)

    def run(self, j, x, W, acc, noise=None, partial=1, w=None, pool=None, drop=None, skip=None, bypass=None):
        """Add state j's outgoing edges' contributions to ``acc`` (node → running sum).

        ``partial`` K > 1 (PC-DARTS): the ops see the first C/K channels of x; every edge's output is joined by the
        other channels (``pool`` ed when the ops halve the resolution), scaled by the edge's row sum of the cell's
        weights ``w`` (or by ``bypass[e]``, the edge weights alone, when given), and the channels are shuffled:
        :func:`~nasrun.spaces.ops.partial_edge` for all outgoing edges
        at once. ``drop``: ``(keep probability, {α row: [B, 1, 1, 1] mask})``, drop-path on every edge's output
        (``x / keep · mask``, as :func:`~nasrun.spaces.darts.drop_path`) before the node sums."""
        plan = self.plans[j]
        if not plan.n:
            return
        if partial == 1:
            contrib = plan(x, W[j], noise, skip)
        else:
            c = x.shape[1] // partial
            out, rest = plan(x[:, :c], W[j], noise, skip), x[:, c:]
            if out.shape[-1] != x.shape[-1]:
                rest = pool(rest)
            scale = (w.index_select(0, plan.row_index).sum(-1) if bypass is None
                     else bypass.index_select(0, plan.row_index)).view(1, -1, 1, 1, 1)
            joined = torch.cat([out, scale * rest.unsqueeze(1)], dim=2)  # [B, edges, C, H, W]
            B, n, C, H, Wd = joined.shape
            contrib = joined.view(B, n, partial, C // partial, H, Wd).transpose(2, 3).reshape(B, n, C, H, Wd)
        if drop is not None:
            keep, masks = drop
            contrib = contrib / keep * torch.stack([masks[e] for e in plan.rows], dim=1)
        contrib = contrib.unbind(1)  # one backward op (a stack), not one per edge
        for k, i in enumerate(plan.dests):
            acc[i] = contrib[k] if acc.get(i) is None else acc[i] + contrib[k]
