"""NAS-Bench-1Shot1 search spaces 1-3 (Zela et al., ICLR 2020; methods.md §1.5): NB101 sub-spaces as one-shot models.

A cell has ``steps`` choice blocks (NB101 nodes 1..steps). Block b sums its candidate inputs
[proj_b(cell input), node 1, …, node b] (weighted by softmax(β) where the node chooses its inputs) and
applies a mixed op over maxpool3x3 / conv3x3-bn-relu / conv1x1-bn-relu. The cell output is
γ₀·proj_out(input) + concat_b(γ_{b+1}·node_{b+1}). Architecture parameters, as the method's ``alphas``:
``normal`` [steps, 3] (ops), ``output`` [1, steps+1] (γ), ``input_<n>`` [1, n] (β of node n).
The derived genotype is an NB101 cell (adjacency + ops), queried in NAS-Bench-101.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..benchmarks.nb101 import AVAILABLE_OPS, prune
from ..errors import UserError
from .base import SearchSpace, genotype_json
from .fused import FusedCellMixin, fused_bn
from .ops import ReLUConvBN, mixed

OPS = ("maxpool3x3", "conv3x3-bn-relu", "conv1x1-bn-relu")  # α-column order of the 1Shot1 repo
BN_MOMENTUM, BN_EPS = 0.997, 1e-5  # NB101's TF values, passed to PyTorch BN as the 1Shot1 repo does

# search space → intermediate nodes, parents of nodes 1..steps, parents of the output, size (paper Table 1)
SPACES = {1: (4, (1, 2, 2, 2), 2, 6240), 2: (4, (1, 1, 2, 2), 3, 29160), 3: (5, (1, 1, 1, 2, 2), 2, 363648)}


class ConvBnRelu(nn.Module):
    """NB101 conv → BN (affine, momentum 0.997) → ReLU."""

    def __init__(self, C_in, C_out, kernel, padding):
        super().__init__()
        self.op = nn.Sequential(nn.Conv2d(C_in, C_out, kernel, padding=padding, bias=False),
                                nn.BatchNorm2d(C_out, momentum=BN_MOMENTUM, eps=BN_EPS), nn.ReLU(inplace=False))

    def forward(self, x):
        return self.op(x)


def make_op(name, C):
    if name == "maxpool3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "conv3x3-bn-relu":
        return ConvBnRelu(C, C, 3, 1)
    return ConvBnRelu(C, C, 1, 0)


@dataclass(frozen=True)
class NB101Cell:
    """An NB101 cell: upper-triangular 0/1 ``matrix`` and ``ops`` (``input``, …, ``output``)."""

    matrix: tuple
    ops: tuple

    def __str__(self):
        return ",".join(self.ops) + "|" + "/".join("".join(map(str, row)) for row in self.matrix)


class ChoiceCell(FusedCellMixin, nn.Module):
    """One-shot cell of the 1Shot1 repo (``Cell`` with ``ChoiceBlock``s).

    :meth:`forward_reference` is the per-op definition. The fused forward computes all ``steps + 1``
    1×1 projections of the cell input as one conv, one BN and one ReLU, and every weighted sum as one
    multiply-add chain.
    """

    def __init__(self, steps, C_in, C):
        super().__init__()
        self.steps = steps
        self.proj = nn.ModuleList(ConvBnRelu(C_in, C, 1, 0) for _ in range(steps))
        self.proj_out = ConvBnRelu(C_in, C * steps, 1, 0)
        self.blocks = nn.ModuleList(nn.ModuleList(make_op(o, C) for o in OPS) for _ in range(steps))

    def forward(self, s0, weights):
        return self.forward_fused(s0, weights) if self.fused else self.forward_reference(s0, weights)

    def forward_reference(self, s0, weights):
        states = []
        for b in range(self.steps):
            inputs = [self.proj[b](s0), *states]
            beta = weights.get(f"input_{b + 1}")
            if beta is not None:
                inputs = [w * t for w, t in zip(beta[0], inputs)]
            states.append(mixed(self.blocks[b], sum(inputs), weights["normal"][b]))
        g = weights["output"][0]
        return g[0] * self.proj_out(s0) + torch.cat([g[b + 1] * s for b, s in enumerate(states)], dim=1)

    def forward_fused(self, s0, weights):
        seqs = [p.op for p in self.proj] + [self.proj_out.op]
        conv = seqs[0][0]
        y = F.conv2d(s0, torch.cat([s[0].weight for s in seqs]), None, conv.stride, conv.padding)
        y = F.relu(fused_bn(y, [s[1] for s in seqs]))
        C = self.proj_out.op[0].out_channels // self.steps
        projs, out_proj = y[:, : self.steps * C].unflatten(1, (self.steps, C)), y[:, self.steps * C:]
        states = []
        for b in range(self.steps):
            inputs = [projs[:, b], *states]
            beta = weights.get(f"input_{b + 1}")
            h = _weighted_sum(inputs, beta[0]) if beta is not None else sum(inputs)
            ops = self.blocks[b]
            states.append(_weighted_sum([ops[0](h), ops[1](h), ops[2](h)], weights["normal"][b]))
        g = weights["output"][0]
        return g[0] * out_proj + (torch.cat(states, dim=1).unflatten(1, (self.steps, -1))
                                  * g[1:].view(1, -1, 1, 1, 1)).flatten(1, 2)


def _weighted_sum(tensors, w):
    """Σ_k w_k·t_k as one multiply and a chain of multiply-adds."""
    out = tensors[0] * w[0]
    for k in range(1, len(tensors)):
        out = torch.addcmul(out, tensors[k], w[k])
    return out


class NB1Shot1Supernet(nn.Module):
    """The 1Shot1 ``Network``: stem, ``layers`` cells in 3 stacks (max-pool 2×2 and channels ×2 between
    stacks), ReLU-Conv1×1-BN(affine False) to C, global mean, linear."""

    def graph_key(self):
        """No Python values of its cells enter a captured step (the method seam asks every supernet)."""
        return None

    def __init__(self, steps, C, layers, num_classes, in_channels=3):
        super().__init__()
        self.stem = ConvBnRelu(in_channels, C, 3, 1)
        self.downsample_at = (layers // 3, 2 * layers // 3)
        cells, C_prev, C_curr = [], C, C
        for i in range(layers):
            if i in self.downsample_at:
                C_curr *= 2
            cells.append(ChoiceCell(steps, C_prev if i == 0 else C_prev * steps, C_curr))
            C_prev = C_curr
        self.cells = nn.ModuleList(cells)
        self.pool = nn.MaxPool2d(2, 2, padding=1)
        self.postprocess = ReLUConvBN(C_prev * steps, C_curr, 1, 1, 0, affine=False, bias=False)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x, weights):
        s = self.stem(x)
        for i, cell in enumerate(self.cells):
            if i in self.downsample_at:
                s = self.pool(s)
            s = cell(s, weights)
        return self.classifier(self.postprocess(s).mean(dim=(2, 3)))


class NB1Shot1Space(SearchSpace):
    """NAS-Bench-1Shot1 search space 1, 2 or 3 (methods.md §1.5).

    Args:
        name: config name (``nb1shot1_s1`` …).
        search_space: 1, 2 or 3.
        C: channels of the first stack (1Shot1 repo: 16).
        layers: cells (1Shot1 repo: 9, three stacks of three).
    """

    benchmark = "nb101"
    default_split = "darts"
    retrainable = False

    def __init__(self, name="nb1shot1_s1", search_space=1, C=16, layers=9):
        if search_space not in SPACES:
            raise UserError(f"space {name}: search_space must be 1, 2 or 3, not {search_space!r}")
        self.name, self.search_space, self.C, self.layers = name, search_space, C, layers
        self.steps, self.parents, self.output_parents, self.size = SPACES[search_space]
        # nodes whose inputs are chosen by β (node 2 of space 1 always takes both {0, 1})
        self.choice_nodes = [n for n in range(2, self.steps + 1) if not (search_space == 1 and n == 2)]

    def alpha_shapes(self):
        return {"normal": (self.steps, len(OPS)), "output": (1, self.steps + 1),
                **{f"input_{n}": (1, n) for n in self.choice_nodes}}

    def op_names(self, cell_type="normal"):
        return [list(OPS) for _ in range(self.steps)] if cell_type == "normal" else None

    def build_supernet(self, num_classes, in_channels=3):
        return NB1Shot1Supernet(self.steps, self.C, self.layers, num_classes, in_channels)

    def build_network(self, genotype, num_classes, **sizes):
        raise UserError("NAS-Bench-1Shot1 cells are evaluated by querying NAS-Bench-101 (nasrun eval "
                        f"space={self.name} genotype=...), not by retraining")

    def _top(self, w, k):
        return sorted(torch.topk(w.detach().reshape(-1), k).indices.tolist())

    def parents_of(self, weights):
        """``{node: [parents]}`` for nodes 1..steps+1 (the output) from β, γ (top-k, methods.md §1.5)."""
        parents = {1: [0]}
        for n in range(2, self.steps + 1):
            parents[n] = self._top(weights[f"input_{n}"], self.parents[n - 1]) if n in self.choice_nodes else list(range(n))
        parents[self.steps + 1] = self._top(weights["output"], self.output_parents)
        return parents

    def derive(self, weights):
        ops = [OPS[k] for k in weights["normal"].detach().argmax(dim=-1).tolist()]
        parents = self.parents_of(weights)
        n = self.steps + 2
        matrix = [[0] * n for _ in range(n)]
        todo, seen = [n - 1], set()
        while todo:  # walk back from the output: only nodes it reaches get their in-edges
            node = todo.pop()
            if node in seen or node == 0:
                continue
            seen.add(node)
            for p in parents[node]:
                matrix[p][node] = 1
                todo.append(p)
        labels = ["input", *ops]
        if self.steps == 4:  # spaces 1/2: NB101's unused fifth node, labelled conv1x1-bn-relu
            for row in matrix:
                row.insert(5, 0)
            matrix.insert(5, [0] * (n + 1))
            labels.append("conv1x1-bn-relu")
        return NB101Cell(tuple(map(tuple, matrix)), (*labels, "output"))

    def discretise(self, weights):
        """The derived architecture as mixing weights: one-hot ops, k-hot inputs and outputs."""
        out = {}
        for key, w in weights.items():
            if key == "normal":
                out[key] = torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype)
            else:
                k = self.output_parents if key == "output" else self.parents[int(key.split("_")[1]) - 1]
                out[key] = torch.zeros_like(w).index_fill_(-1, torch.tensor(self._top(w, k), device=w.device), 1.0)
        return out

    def parse_genotype(self, text):
        text = str(text).strip()
        if text.startswith("{"):
            data = genotype_json(text)
            if "matrix" in data:
                return self._check(data["matrix"], data.get("ops"))
            text = str(data.get("genotype", ""))
        ops, sep, rows = text.partition("|")
        if not sep:
            raise UserError(f"malformed NB101 cell {text!r}; expected 'op,op,...|row/row/...', e.g. "
                            "input,conv3x3-bn-relu,maxpool3x3,output|0110/0001/0001/0000")
        try:
            matrix = [[int(c) for c in row] for row in rows.split("/")]
        except ValueError:
            raise UserError(f"malformed NB101 adjacency {rows!r}: rows of 0/1 separated by '/'") from None
        return self._check(matrix, ops.split(","))

    def _check(self, matrix, ops):
        ops = list(ops or [])
        n = len(matrix)
        if n < 2 or any(len(r) != n for r in matrix) or len(ops) != n:
            raise UserError(f"NB101 cell: the adjacency must be square with one op per vertex ({n} rows, {len(ops)} ops)")
        if ops[0] != "input" or ops[-1] != "output" or any(o not in AVAILABLE_OPS for o in ops[1:-1]):
            raise UserError(f"NB101 cell ops must be input, {{{', '.join(AVAILABLE_OPS)}}}…, output; got {ops}")
        if any(matrix[r][c] not in (0, 1) or (c <= r and matrix[r][c]) for r in range(n) for c in range(n)):
            raise UserError("NB101 cell adjacency must be 0/1 and strictly upper-triangular")
        return NB101Cell(tuple(tuple(r) for r in matrix), tuple(ops))

    def format_genotype(self, genotype):
        return str(genotype)

    def num_architectures(self):
        """The paper's count (Table 1), a constant: methods.md §8.1 explains why it is not enumerated."""
        return self.size

    def genotype_stats(self, genotype):
        """No skip op here; depth = longest input→output path (edges) of the pruned cell."""
        matrix, _ = prune(genotype.matrix, genotype.ops)
        if matrix is None:
            return {"skip_count": 0, "depth": 0}
        depth = [0] * len(matrix)
        for v in range(1, len(matrix)):
            depth[v] = max((depth[u] + 1 for u in range(v) if matrix[u][v]), default=0)
        return {"skip_count": 0, "depth": depth[-1]}
