"""NAS-Bench-201 cell space (Dong & Yang, ICLR 2020; methods.md §1.4).

Cell: 4 nodes, node i = Σ_{j<i} op_{i←j}(node j), output = node 3, six edges in the order
``1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2``. Macro (TinyNetwork): stem, N cells, ResNet block (stride 2),
N cells, ResNet block, N cells, BN-ReLU, global pool, linear.
"""

from dataclasses import dataclass
from itertools import product

import torch
from torch import nn

from ..errors import UserError
from .base import SearchSpace, genotype_json
from .fused import CellPlans, FusedCellMixin, SourcePlan, pack_parameters
from .ops import HardPath, Identity, Pooling, ReLUConvBN, Zero, add_all, mixed, mixed_hard, partial_edge
from .progressive import ProgressiveSupernet

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
MAX_NODES = 4
EDGES = tuple(f"{i}<-{j}" for i in range(1, MAX_NODES) for j in range(i))


def make_op(name, C, affine, track_running_stats, bias=None):
    """One NB201 candidate op at C channels, stride 1 (the only kind inside NB201 cells); ``bias``: the convs' bias
    (None: AutoDL's rule, a bias exactly when the BN is not affine)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(C, C, 1, 1, 0, affine=affine, track_running_stats=track_running_stats, bias=bias)
    if name == "nor_conv_3x3":
        return ReLUConvBN(C, C, 3, 1, 1, affine=affine, track_running_stats=track_running_stats, bias=bias)
    if name == "avg_pool_3x3":
        return Pooling()
    raise ValueError(f"unknown NB201 op {name!r}")


@dataclass(frozen=True)
class NB201Genotype:
    """An NB201 cell: ``nodes[i-1]`` lists ``(op, j)`` for the inputs of node i in ascending j."""

    nodes: tuple

    def __str__(self):
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|" for node in self.nodes)

    def edge_ops(self):
        """``{"i<-j": op}`` for the six edges."""
        return {f"{i + 1}<-{j}": op for i, node in enumerate(self.nodes) for op, j in node}


class ResNetBasicblock(nn.Module):
    """The fixed stride-2 reduction block between NB201 stages (always affine)."""

    def __init__(self, C_in, C_out):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0), nn.Conv2d(C_in, C_out, 1, 1, 0, bias=False))

    def forward(self, x):
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class SearchCell(FusedCellMixin, nn.Module):
    """Mixed-op cell: every edge holds all candidate ops.

    :meth:`forward_reference` is the per-op definition; the default forward computes the same function
    with fused mixed ops (:mod:`nasrun.spaces.fused`), per source node. With ``partial`` K > 1 (PC-DARTS's
    partial channels, DrNAS ``NAS201SearchCell_PartialChannel``) only the first C/K channels of an edge's input
    go through its ops; the rest bypass them, then the channels are shuffled.
    """

    def __init__(self, C, ops, affine, track_running_stats, partial=1, conv_bias=None):
        super().__init__()
        if C % partial:
            raise UserError(f"space.partial_channels={partial} must divide every stage's width (C={C})")
        self.init_args = dict(C=C, ops=ops, affine=affine, track_running_stats=track_running_stats, partial=partial,
                              conv_bias=conv_bias)
        self.partial, self.active = partial, None  # active: per edge, the ops still searched (DrNAS pruning)
        self.edges = nn.ModuleDict(
            {e: nn.ModuleList(make_op(o, C // partial, affine, track_running_stats, conv_bias) for o in ops)
             for e in EDGES})
        self.set_active(None)

    def set_active(self, active):
        """Compute only the ops ``active[r]`` on edge r (None: all): in the per-op cell and in the fused plans."""
        self.active = active
        modules = {r: [op if active is None or o in active[r] else None for o, op in enumerate(self.edges[e])]
                   for r, e in enumerate(EDGES)}
        K = len(self.init_args["ops"])
        device = next(self.parameters(), torch.zeros(())).device
        self.sources = CellPlans([
            SourcePlan([r for r, e in enumerate(EDGES) if e.endswith(f"<-{j}")],
                       [int(e.split("<-")[0]) for e in EDGES if e.endswith(f"<-{j}")], modules, K)
            for j in range(MAX_NODES - 1)], K).to(device)
        pack_parameters(self)

    def forward(self, x, w, bypass=None):
        """``bypass``: per-edge scales of the partial-channel bypass (None: each edge's weight sum)."""
        if isinstance(w, HardPath):
            return self.forward_hard(x, w)
        if self.fused and self.sources.complete:
            return self.forward_fused(x, w, bypass)
        return self.forward_reference(x, w, bypass)

    def _edge(self, r, x, w, index=None, terms=None, scale=None):
        """Edge ``r``: the mixed op (GDAS: only op ``index``), on the first C/K input channels when partial; the
        bypassed channels are scaled by the edge's weight sum (1, or PC-DARTS's β̂ when folded into w) and
        shuffled back in."""
        ops, active = self.edges[EDGES[r]], None if self.active is None else self.active[r]
        return partial_edge(x, self.partial, lambda part: mixed(ops, part, w, active) if index is None
                            else mixed_hard(ops, part, w, index, terms), w, scale=scale)

    @property
    def ops(self):
        """The candidate ops of every edge, in α-row order (as the DARTS cell's ``ops``)."""
        return [self.edges[e] for e in EDGES]

    def forward_reference(self, x, w, bypass=None):
        nodes = [x]
        for i in range(1, MAX_NODES):
            rows = [EDGES.index(f"{i}<-{j}") for j in range(i)]
            nodes.append(sum(self._edge(r, nodes[j], w[r], scale=None if bypass is None else bypass[r])
                             for j, r in enumerate(rows)))
        return nodes[-1]

    def forward_hard(self, x, path):
        """GDAS: each edge runs only its sampled op (:func:`~nasrun.spaces.ops.mixed_hard`)."""
        nodes, terms = [x], path.edge_terms()
        for i in range(1, MAX_NODES):
            rows = [EDGES.index(f"{i}<-{j}") for j in range(i)]
            nodes.append(add_all(self._edge(r, nodes[j], terms[r][0], path.index[r], terms[r][1:])
                                 for j, r in enumerate(rows)))
        return nodes[-1]

    def forward_fused(self, x, w, bypass=None):
        W, acc, nodes = self.sources.gather(w), {}, [x]
        for j in range(len(self.sources)):
            self.sources.run(j, nodes[j], W, acc, partial=self.partial, w=w, bypass=bypass)
            nodes.append(acc[j + 1])
        return nodes[-1]


class InferCell(nn.Module):
    """Discrete cell of one genotype (affine BN, convs without bias)."""

    def __init__(self, C, genotype):
        super().__init__()
        self.edges = nn.ModuleDict({e: make_op(o, C, True, True) for e, o in genotype.edge_ops().items()})

    def forward(self, x):
        nodes = [x]
        for i in range(1, MAX_NODES):
            nodes.append(sum(self.edges[f"{i}<-{j}"](nodes[j]) for j in range(i)))
        return nodes[-1]


class TinyNetwork(nn.Module):
    """NB201 macro skeleton around a cell factory ``make_cell(C)``."""

    def __init__(self, C, N, num_classes, make_cell, in_channels=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        cells = []
        for stage, mult in enumerate((1, 2, 4)):
            if stage > 0:
                cells.append(ResNetBasicblock(C * mult // 2, C * mult))
            cells.extend(make_cell(C * mult) for _ in range(N))
        self.cells = nn.ModuleList(cells)
        self.lastact = nn.Sequential(nn.BatchNorm2d(4 * C), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * C, num_classes)

    def _head(self, x):
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))


class NB201Supernet(ProgressiveSupernet, TinyNetwork):
    """TinyNetworkDarts: ``forward(x, weights)`` with ``weights["normal"]`` of shape [6, K]."""

    def __init__(self, C, N, num_classes, make_cell, in_channels=3, partial=1):
        super().__init__(C, N, num_classes, make_cell, in_channels)
        self._init_progressive(partial)

    def search_cells(self):
        return [(i, c, "normal") for i, c in enumerate(self.cells) if isinstance(c, SearchCell)]

    def forward(self, x, weights, bypass=None):
        """``bypass``: ``{"normal": [E]}`` scales of the partial-channel bypass (None: each edge's weight sum)."""
        w, b = weights["normal"], None if bypass is None else bypass["normal"]
        x = self.stem(x)
        for cell in self.cells:
            x = (cell(x, w) if b is None else cell(x, w, b)) if isinstance(cell, SearchCell) else cell(x)
        return self._head(x)


class NB201Network(TinyNetwork):
    """The benchmark's evaluation network (TinyNetwork with InferCells)."""

    def forward(self, x):
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self._head(x)


class NB201Space(SearchSpace):
    supports_hard_paths = True  # GDAS
    """NAS-Bench-201 cell space (methods.md §1.4).

    Args:
        name: config name (``nb201`` or ``nb201_noskip``).
        ops: candidate ops in α-column order.
        C: channels of the first stage.
        N: cells per stage.
        affine: affine BN inside search cells (False in every reference).
        track_running_stats: BN running statistics in search cells (AutoDL False, darts-pt and DrNAS True).
        partial_channels: K of partial channels (PC-DARTS; DrNAS's progressive search): 1/K of each edge's input
            goes through its mixed op (1: all).
        conv_bias: whether the search cells' convs have a bias (null: AutoDL's rule, one exactly when the BN is not
            affine, i.e. yes in search cells; DrNAS's NB201 code: false).
    """

    benchmark = "nb201"
    default_split = "nb201"

    def __init__(self, name="nb201", ops=NB201_OPS, C=16, N=5, affine=False, track_running_stats=False,
                 partial_channels=1, conv_bias=None):
        unknown = [o for o in ops if o not in NB201_OPS]
        if unknown:
            raise UserError(f"space {name}: unknown op(s) {unknown}; NB201 ops are {list(NB201_OPS)}")
        self.name, self.ops, self.C, self.N = name, tuple(ops), C, N
        self.affine, self.track_running_stats, self.partial_channels = affine, track_running_stats, partial_channels
        self.conv_bias = conv_bias
        self.edges = EDGES

    def alpha_shapes(self):
        return {"normal": (len(EDGES), len(self.ops))}

    def op_names(self, cell_type="normal"):
        """Candidate ops per edge (the same list on every NB201 edge)."""
        return [list(self.ops) for _ in EDGES]

    def build_supernet(self, num_classes, in_channels=3):
        return NB201Supernet(self.C, self.N, num_classes,
                             lambda c: SearchCell(c, self.ops, self.affine, self.track_running_stats, self.partial_channels,
                                                  self.conv_bias),
                             in_channels, self.partial_channels)

    def build_network(self, genotype, num_classes, C=None, N=None, in_channels=3):
        g = self._coerce(genotype)
        return NB201Network(C or self.C, N or self.N, num_classes, lambda c: InferCell(c, g), in_channels)

    def edge_targets(self):
        """The node each α row feeds (PC-DARTS normalises its edge weights β over a node's inputs)."""
        return [int(e.split("<-")[0]) for e in EDGES]

    def sample_architecture(self, gen):
        """One op per edge, uniformly (RSPS / RS-WS)."""
        index = torch.randint(len(self.ops), (len(EDGES),), generator=gen)
        return {"normal": torch.nn.functional.one_hot(index, len(self.ops)).float()}

    def derive(self, weights):
        w = weights["normal"].detach()
        best = w.argmax(dim=-1).tolist()
        ops = {e: self.ops[k] for e, k in zip(EDGES, best)}
        return NB201Genotype(tuple(tuple((ops[f"{i}<-{j}"], j) for j in range(i)) for i in range(1, MAX_NODES)))

    def _coerce(self, genotype):
        return genotype if isinstance(genotype, NB201Genotype) else self.parse_genotype(genotype)

    def parse_genotype(self, text):
        text = str(text).strip()
        if text.startswith("{"):
            data = genotype_json(text)
            if data.get("space") not in (None, self.name, "nb201"):
                raise UserError(f"genotype is for space '{data['space']}', not '{self.name}'; pass space={data['space']}")
            text = str(data.get("genotype", ""))
        if text.startswith("Genotype("):
            raise UserError("this is a DARTS-space genotype, not an NB201 arch string; pass space=darts")
        if text.startswith("input,"):
            raise UserError("this is an NB101 cell, not an NB201 arch string; pass space=nb1shot1_s1 (or _s2, _s3)")
        from .darts_genotypes import NAMED

        if text in NAMED:
            raise UserError(f"{text} is a DARTS-space genotype name, not an NB201 arch string; pass space=darts")
        parts = text.split("+")
        if len(parts) != MAX_NODES - 1:
            raise UserError(f"malformed NB201 genotype {text!r}: expected 3 nodes separated by '+', got {len(parts)}; "
                            "example: |nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|skip_connect~1|avg_pool_3x3~2|")
        nodes = []
        for i, part in enumerate(parts, start=1):
            if not (part.startswith("|") and part.endswith("|")):
                raise UserError(f"malformed NB201 genotype: node {i} {part!r} must look like |op~j|...|")
            items = part[1:-1].split("|")
            node = []
            for j, item in enumerate(items):
                op, sep, src = item.partition("~")
                if not sep or not src.isdigit():
                    raise UserError(f"malformed NB201 genotype: node {i} entry {item!r} must be op~input")
                if op not in self.ops:
                    raise UserError(f"malformed NB201 genotype: node {i} has unknown op {op!r}; "
                                    f"space {self.name} has {list(self.ops)}")
                if int(src) != j:
                    raise UserError(f"malformed NB201 genotype: node {i} entry {item!r} should take input {j}")
                node.append((op, j))
            if len(node) != i:
                raise UserError(f"malformed NB201 genotype: node {i} needs {i} inputs, got {len(node)}")
            nodes.append(tuple(node))
        return NB201Genotype(tuple(nodes))

    def format_genotype(self, genotype):
        return str(self._coerce(genotype))

    def num_architectures(self):
        return len(self.ops) ** len(EDGES)

    def all_genotypes(self):
        """Every cell of the space, in α-index order (edge 0 varies slowest)."""
        for combo in product(self.ops, repeat=len(EDGES)):
            ops = dict(zip(EDGES, combo))
            yield NB201Genotype(tuple(tuple((ops[f"{i}<-{j}"], j) for j in range(i)) for i in range(1, MAX_NODES)))

    def genotype_stats(self, genotype):
        g = self._coerce(genotype)
        edge_ops = g.edge_ops()
        depth = {0: 0}
        for i in range(1, MAX_NODES):
            ins = [depth[j] + 1 for j in range(i) if edge_ops[f"{i}<-{j}"] != "none" and depth[j] is not None]
            depth[i] = max(ins) if ins else None
        return {"skip_count": sum(op == "skip_connect" for op in edge_ops.values()),
                "depth": depth[MAX_NODES - 1] or 0}


def canonical_form(genotype):
    """Isomorphism-invariant string of an NB201 cell: AutoDL ``Structure.to_unique_str(consider_zero=True)``.

    ``none`` and an input whose expression is exactly zero become the zero term ``#``, ``skip_connect``
    passes its input's expression through, and the summands of every node are sorted. As in the
    reference, zero terms stay in the sum (a node ``#+#`` is not recognised as zero); this rule yields
    the published 6,466 unique cells, while dropping zero terms entirely would merge them into 5,390.
    """
    nodes = {0: "0"}
    for i, node in enumerate(genotype.nodes, start=1):
        terms = []
        for op, j in node:
            if op == "none" or nodes[j] == "#":
                terms.append("#")
            else:
                terms.append(nodes[j] if op == "skip_connect" else f"({nodes[j]})@{op}")
        nodes[i] = "+".join(sorted(terms))
    return nodes[MAX_NODES - 1]


__all__ = ["NB201Space", "NB201Genotype", "NB201_OPS", "EDGES", "canonical_form", "torch"]
