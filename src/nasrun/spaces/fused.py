"""Fused mixed operations (perf.md §3): the per-op cells' function, computed with far fewer kernels.

The per-op cells (one module per edge and candidate op, summed edge by edge) stay the readable
reference and own every parameter; this module only evaluates them differently. Per *source* state,
not per edge:

- ReLU once (every conv op of every outgoing edge starts with ReLU of the same tensor);
- the outgoing edges' convolutions of one op as one convolution, their filters concatenated at forward
  time (NB201: one plain conv; DARTS: depthwise stages as one grouped conv over the edges' copies of the
  input, pointwise stages as one conv with ``groups = edges``);
- one BatchNorm call over the concatenated channels (BN is per channel, so this is exact; running
  statistics are written back to the per-edge modules);
- parameter-free ops (skip, pools, and the DARTS pools' BN in training mode) once per source;
- ``none`` never computed (its α still gets the exact gradient, through the softmax);
- the weighted sum of all outgoing edges as one broadcast multiply-add chain.

Parameter names, shapes and BN buffers are those of the per-op modules, so checkpoints, op masking and
discretisation are unchanged, and ``set_fused(net, False)`` switches back to the reference.
"""

import torch
import torch.nn.functional as F
from torch import nn

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
    """Marks a cell with a fused forward; ``fused`` picks it (default on)."""

    fused = True


def fused_bn(x, bns):
    """``BatchNorm2d`` of several modules over their concatenated channels, with nn.BatchNorm2d semantics.

    ``x`` holds the modules' channels one after the other; running statistics (where tracked) are read
    from and written back to each module, and ``num_batches_tracked`` counts up as in the module.
    """
    bn = bns[0]
    if bn.momentum is None:
        raise ValueError("fused BatchNorm needs a fixed momentum")
    track = bn.track_running_stats
    batch_stats = bn.training or not track
    weight = bias = None
    if bn.affine:
        weight = bn.weight if len(bns) == 1 else torch.cat([b.weight for b in bns])
        bias = bn.bias if len(bns) == 1 else torch.cat([b.bias for b in bns])
    if not track:
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, bn.eps)
    if len(bns) == 1:
        rm, rv = bn.running_mean, bn.running_var
    else:
        rm, rv = torch.cat([b.running_mean for b in bns]), torch.cat([b.running_var for b in bns])
    y = F.batch_norm(x, rm, rv, weight, bias, batch_stats, bn.momentum, bn.eps)
    if bn.training:
        with torch.no_grad():
            if len(bns) > 1:
                sizes = [b.num_features for b in bns]
                torch._foreach_copy_([b.running_mean for b in bns], list(rm.split(sizes)))
                torch._foreach_copy_([b.running_var for b in bns], list(rv.split(sizes)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y


def _shared_bn(x, bns):
    """The same BN-without-affine applied to one tensor on several edges (training mode): the output is
    the same on every edge, so it is computed once; each edge's running statistics get the batch's."""
    bn = bns[0]
    y = F.batch_norm(x, None, None, None, None, True, 0.0, bn.eps)
    if bn.track_running_stats:
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
            torch._foreach_lerp_([b.running_mean for b in bns], [mean] * len(bns), bn.momentum)
            torch._foreach_lerp_([b.running_var for b in bns], [var] * len(bns), bn.momentum)
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return y


def _cat(tensors):
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _conv(x, convs, groups=1):
    """One conv with the filters (and biases) of ``convs`` concatenated on the output channels."""
    c = convs[0]
    bias = _cat([m.bias for m in convs]) if c.bias is not None else None
    return F.conv2d(x, _cat([m.weight for m in convs]), bias, c.stride, c.padding, c.dilation, groups)


class _Term:
    """One candidate op on the outgoing edges of a source that have it.

    ``kind``: ``shared`` (same tensor on every edge), ``edges`` (one tensor per member edge) or ``noise``.
    """

    def __init__(self, kind, fn, modules, members, rows, n_edges):
        self.kind, self.fn, self.modules = kind, fn, modules
        self.members = members  # local edge indices (ascending) that have this op
        self.rows = rows        # their α rows
        self.full = kind == "shared" or len(members) == n_edges


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


def _relu_conv_bn(src, mods):
    seqs = [m.op for m in mods]
    y = _conv(src.relu, [s[1] for s in seqs])
    return fused_bn(y, [s[2] for s in seqs])


def _sep_conv(src, mods):
    m = len(mods)
    seqs = [mod.op for mod in mods]
    C = seqs[0][1].in_channels
    y = _conv(src.repeated(m), [s[1] for s in seqs], groups=m * C)
    y = fused_bn(_conv(y, [s[2] for s in seqs], groups=m), [s[3] for s in seqs])
    y = _conv(F.relu(y), [s[5] for s in seqs], groups=m * C)
    return fused_bn(_conv(y, [s[6] for s in seqs], groups=m), [s[7] for s in seqs])


def _dil_conv(src, mods):
    m = len(mods)
    seqs = [mod.op for mod in mods]
    C = seqs[0][1].in_channels
    y = _conv(src.repeated(m), [s[1] for s in seqs], groups=m * C)
    return fused_bn(_conv(y, [s[2] for s in seqs], groups=m), [s[3] for s in seqs])


def _factorized_reduce(src, mods):
    # conv_1 (1×1, stride 2) reads pixel (2h, 2w), conv_2 the one at (2h+1, 2w+1): one 2×2 stride-2 conv whose
    # filters are zero but at tap (0,0) for the first half of each edge's channels and (1,1) for the second.
    w1 = torch.stack([m.conv_1.weight for m in mods])
    w2 = torch.stack([m.conv_2.weight for m in mods])
    w = torch.cat([F.pad(w1, (0, 1, 0, 1)), F.pad(w2, (1, 0, 1, 0))], dim=1).flatten(0, 1)
    return fused_bn(F.conv2d(src.relu, w, stride=2), [m.bn for m in mods])


class SourcePlan(nn.Module):
    """The outgoing edges of one source state, their ops grouped into fused terms.

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
        terms, cells = [], []
        for entries in by_type.values():
            members = [k for k, _, _, _ in entries]
            term = _term_for([op for _, _, _, op in entries], members, [e for _, e, _, _ in entries], self.n)
            if term is None:
                continue
            cols = {k: col for k, _, col, _ in entries}
            cells.append([(e, cols.get(k)) for k, e in enumerate(self.rows)])  # (row, column or None: weight 0)
            terms.append(term)
        order = sorted(range(len(terms)), key=lambda t: not terms[t].full)  # a full term starts the sum
        self.terms = [terms[t] for t in order]
        self.weight_cells = [cells[t] for t in order]
        for t, term in enumerate(self.terms):
            self.register_buffer(f"sub{t}", torch.tensor(term.members, dtype=torch.long), persistent=False)
        self.register_buffer("row_index", torch.tensor(self.rows, dtype=torch.long), persistent=False)

    def forward(self, x, W, noise=None, skip=None):
        """``[B, n_edges, C, H, W]``: every outgoing edge's mixed-op output, weighted and summed over ops.

        ``W`` is ``[terms, n_edges]``, each term's mixing weight on each outgoing edge (0 where the edge
        lacks the op), from :class:`CellPlans`; ``noise`` the cell's pre-drawn noise tensors by α row; ``skip``
        P-DARTS's pre-drawn dropout scales of the skip connections by α row (the skip term is then per edge).
        """
        src = _Source(x)
        out = None
        W = W.unbind(0)  # one backward op for all terms
        for t, term in enumerate(self.terms):
            full = term.full
            if term.kind == "shared":
                f = term.fn(src, term.modules).unsqueeze(1)
                if skip is not None and isinstance(term.modules[0], Identity):
                    f = f * torch.stack([skip[e] for e in term.rows], dim=1)
                    full = len(term.members) == self.n
            elif term.kind == "pool_bn":
                f = self._pool_bn(src, term)
            elif term.kind == "noise":
                f = torch.stack([noise[e] for e in term.rows], dim=1)
            else:
                f = term.fn(src, term.modules).unflatten(1, (len(term.members), -1))
            if full:
                w = W[t].view(1, -1, 1, 1, 1)
                out = f * w if out is None else torch.addcmul(out, f, w)
            else:
                sub = getattr(self, f"sub{t}")
                w = W[t].index_select(0, sub).view(1, -1, 1, 1, 1)
                if out is None:
                    out = f.new_zeros(f.shape[0], self.n, *f.shape[2:])
                out = out.index_add(1, sub, f * w)
        if out is None:  # only `none` leaves this source
            raise ValueError("a source whose every op is none has no fused form")
        return out

    @staticmethod
    def _pool_bn(src, term):
        pools, bns = [m[0] for m in term.modules], [m[1] for m in term.modules]
        p = pools[0](src.x)
        if bns[0].training or not bns[0].track_running_stats:
            y = _shared_bn(p, bns)
            return y.unsqueeze(1).expand(-1, len(bns), -1, -1, -1)
        # evaluation with running statistics: each edge normalises with its own
        rep = p.repeat(1, len(bns), 1, 1)
        return fused_bn(rep, bns).unflatten(1, (len(bns), -1))


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
        cells = [c for p in plans for term in p.weight_cells for c in term]
        self.needs_zero = any(col is None for _, col in cells)  # some edge lacks some op: read a zero column
        stride = num_ops + 1 if self.needs_zero else num_ops
        self.register_buffer("widx", torch.tensor([e * stride + (num_ops if col is None else col) for e, col in cells],
                                                  dtype=torch.long), persistent=False)
        self.sizes = [len(p.terms) * p.n for p in plans]
        # every state with outgoing edges computes something (a pruned edge keeping only `none` may leave one without)
        self.complete = all(p.terms or not p.n for p in plans)

    def __len__(self):
        return len(self.plans)

    def gather(self, w):
        """``[terms, n_edges]`` weight matrices of every plan from the cell's ``[E, K]`` weights, in one gather."""
        flat = (F.pad(w, (0, 1)) if self.needs_zero else w).reshape(-1)
        return [part.view(len(p.terms), p.n) for p, part in zip(self.plans, flat[self.widx].split(self.sizes))]

    def run(self, j, x, W, acc, noise=None, partial=1, w=None, pool=None, drop=None, skip=None):
        """Add state j's outgoing edges' contributions to ``acc`` (node → running sum).

        ``partial`` K > 1 (PC-DARTS): the ops see the first C/K channels of x; every edge's output is joined by the
        other channels (``pool`` ed when the ops halve the resolution), scaled by the edge's row sum of the cell's
        weights ``w``, and the channels are shuffled: :func:`~nasrun.spaces.ops.partial_edge` for all outgoing edges
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
            scale = w.index_select(0, plan.row_index).sum(-1).view(1, -1, 1, 1, 1)
            joined = torch.cat([out, scale * rest.unsqueeze(1)], dim=2)  # [B, edges, C, H, W]
            B, n, C, H, Wd = joined.shape
            contrib = joined.view(B, n, partial, C // partial, H, Wd).transpose(2, 3).reshape(B, n, C, H, Wd)
        if drop is not None:
            keep, masks = drop
            contrib = contrib / keep * torch.stack([masks[e] for e in plan.rows], dim=1)
        contrib = contrib.unbind(1)  # one backward op (a stack), not one per edge
        for k, i in enumerate(plan.dests):
            acc[i] = contrib[k] if acc.get(i) is None else acc[i] + contrib[k]
