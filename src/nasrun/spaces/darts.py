"""The DARTS cell space and its variants (Liu et al. 2019; RobustDARTS S1-S4; Amended-DARTS; methods.md §1.1-1.3).

One class covers them all: the op list (or per-edge op lists, S1), the topology (``full``: node i takes
every earlier state, 14 edges; ``fixed``: node i takes c_{k-2} and the previous state, 8 edges) and
whether α is shared by cell type (``normal``/``reduce``) or owned by every cell (``amended_deep``).
"""

import math
from math import comb, prod

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .base import SearchSpace
from .darts_genotypes import NAMED, DartsGenotype, DeepGenotype, parse_darts_text
from .fused import CellPlans, FusedCellMixin, SourcePlan, pack_parameters
from .ops import (DARTS_OPS, FactorizedReduce, HardPath, Identity, Noise, ReLUConvBN, add_all, mixed, mixed_hard,
                  partial_edge)
from .progressive import ProgressiveSupernet

STEPS = 4
CONCAT = tuple(range(2, 2 + STEPS))


def topology_edges(topology):
    """``[(node, input_state)]`` in α-row order; input 0 = c_{k-2}, 1 = c_{k-1}, 2+i = node i."""
    if topology == "full":
        return [(i, j) for i in range(STEPS) for j in range(i + 2)]
    if topology == "fixed":
        return [(i, j) for i in range(STEPS) for j in (0, i + 1)]
    raise UserError(f"unknown topology '{topology}'; choose full or fixed")


def search_op(name, C, stride, pool_bn=True):
    op = DARTS_OPS[name](C, stride, False)
    if "pool" in name and pool_bn:  # search-time pools get a non-affine BN (quark0 MixedOp; not DrNAS)
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


def read_edge_ops(path):
    """Per-edge op lists from a JSON file (``selector=prune_ops`` writes them); one-line error when unusable."""
    import json
    from pathlib import Path

    try:
        data = json.loads(Path(path).expanduser().read_text())
        data = data.get("decisions", data)  # a selection.json of selector=prune_ops, or the lists themselves
        return {k: data[k] for k in ("normal", "reduce")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"space.edge_ops_file={path}: cannot read per-edge op lists ({exc}); give the pruned_ops.json "
                        "of the previous P-DARTS stage") from None


def drop_mask(x, keep):
    """Per-sample keep mask ``[B, 1, 1, 1]`` ~ Bernoulli(keep) for a batch like x (one draw of the device RNG)."""
    return torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)


def drop_path(x, p):
    """Zero whole samples with probability p (a float or a 0-d tensor) and rescale the rest (quark0 ``drop_path``)."""
    keep = 1.0 - p
    return x / keep * drop_mask(x, keep)


class SearchCell(FusedCellMixin, nn.Module):
    """Mixed-op DARTS cell with the space's topology and per-edge op lists.

    :meth:`forward_reference` is the per-op definition; the default forward computes the same function
    with fused mixed ops (:mod:`nasrun.spaces.fused`), per input state.
    """

    def __init__(self, C_pp, C_p, C, reduction, reduction_prev, edges, edge_ops, partial=1, pool_bn=True):
        super().__init__()
        self.init_args = dict(C_pp=C_pp, C_p=C_p, C=C, reduction=reduction, reduction_prev=reduction_prev, edges=edges,
                              edge_ops=edge_ops, partial=partial, pool_bn=pool_bn)  # to rebuild at another width
        self.reduction, self.partial = reduction, partial
        self.active = None  # per edge, the indices of the ops still searched (None: all; DrNAS's pruning sets it)
        if C % partial:
            raise UserError(f"space.partial_channels={partial} must divide the cell width {C}")
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False, bias=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False, bias=False)
        self.by_node = [[(e, j) for e, (n, j) in enumerate(edges) if n == i] for i in range(STEPS)]
        self.ops = nn.ModuleList(nn.ModuleList(search_op(o, C // partial, 2 if reduction and j < 2 else 1, pool_bn)
                                               for o in edge_ops[e]) for e, (_, j) in enumerate(edges))
        self.bypass_pool = nn.MaxPool2d(2, 2) if partial > 1 and reduction else None
        self.skip_dropout = None  # P-DARTS: dropout rate on skip-connection outputs (set per epoch by the supernet)
        self.set_active(None)
        self.noise_rows = [e for e, ops in enumerate(self.ops) for op in ops if isinstance(op, Noise)]

    def set_active(self, active):
        """Compute only the ops ``active[e]`` on edge e (None: all): in the per-op cell and in the fused plans."""
        self.active = active
        edges, K = self.init_args["edges"], len(self.init_args["edge_ops"][0])
        modules = {e: [op if active is None or o in active[e] else None for o, op in enumerate(ops)]
                   for e, ops in enumerate(self.ops)}
        self.skip_rows = {e for e, ops in modules.items() if any(isinstance(op, Identity) for op in ops)}  # P-DARTS
        device = next(self.parameters()).device
        # state j feeds nodes i with (i, j) in edges; node i is complete once state i+1 has been processed
        self.sources = CellPlans([
            SourcePlan([e for e, (_, s) in enumerate(edges) if s == j], [n for n, s in edges if s == j], modules, K)
            for j in range(STEPS + 1)], K).to(device)
        pack_parameters(self)

    def forward(self, s0, s1, w, drop_prob=None, bypass=None):
        """``bypass``: per-edge scales of the partial-channel bypass (None: each edge's weight sum)."""
        if isinstance(w, HardPath):
            return self.forward_hard(s0, s1, w)
        drop = drop_prob is not None and self.training
        skip = self.skip_dropout is not None and self.training
        if ((drop or skip) and self.noise_rows) or not self.sources.complete:
            # per-edge work: the per-op cell
            return self.forward_reference(s0, s1, w, drop_prob, bypass)
        if not self.fused:
            return self.forward_reference(s0, s1, w, drop_prob, bypass)
        return self.forward_fused(s0, s1, w, drop_prob if drop else None, bypass)

    def _edge(self, e, x, w, index=None, terms=None, scale=None):
        """One edge: the mixed op (GDAS: only op ``index``); with partial channels (PC-DARTS) only the first
        C/K channels go through it, the rest bypass (max-pooled in a reduction) scaled by the edge's weight
        sum (its edge normalisation β when the method folds β into w), then the channels are shuffled."""
        ops, active = self.ops[e], None if self.active is None else self.active[e]

        def mix(part):
            if self.skip_dropout is not None and index is None:
                return sum(w[o] * (F.dropout(op(part), self.skip_dropout, self.training) if isinstance(op, Identity)
                                   else op(part)) for o, op in enumerate(ops) if active is None or o in active)
            return mixed(ops, part, w, active) if index is None else mixed_hard(ops, part, w, index, terms)

        return partial_edge(x, self.partial, mix, w, self.bypass_pool, scale)

    def forward_reference(self, s0, s1, w, drop_prob=None, bypass=None):
        """The per-op cell; ``drop_prob`` drops each mixed edge's output per sample (training only), as the
        search cells of SDARTS / SP-DARTS (``drop_path`` on every edge, identity included)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        drop = drop_prob is not None and self.training
        for node in self.by_node:
            scales = [None if bypass is None else bypass[e] for e, _ in node]
            states.append(sum(drop_path(self._edge(e, states[j], w[e], scale=b), drop_prob) if drop
                              else self._edge(e, states[j], w[e], scale=b) for (e, j), b in zip(node, scales)))
        return torch.cat(states[2:], dim=1)

    def forward_hard(self, s0, s1, path):
        """GDAS: each edge runs only its sampled op (:func:`~nasrun.spaces.ops.mixed_hard`)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        terms = path.edge_terms()
        for node in self.by_node:
            states.append(add_all(self._edge(e, states[j], terms[e][0], path.index[e], terms[e][1:]) for e, j in node))
        return torch.cat(states[2:], dim=1)

    def forward_fused(self, s0, s1, w, drop_prob=None, bypass=None):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        noise = self._draw_noise(states[1][:, :states[1].shape[1] // self.partial])
        drop, skip = self._draw_drops(states, drop_prob)
        W, acc = self.sources.gather(w), {}
        for j in range(len(self.sources)):
            self.sources.run(j, states[j], W, acc, noise, self.partial, w, self.bypass_pool, drop, skip, bypass)
            if j >= 1:
                states.append(acc[j - 1])
        return torch.cat(states[2:], dim=1)

    def _draw_drops(self, states, drop_prob):
        """The per-op forward's random masks, drawn in its order (node by node, edge by edge: P-DARTS's dropout on the
        skip connection inside the edge, then the edge's drop-path), so both forwards drop the same: ``(drop-path
        (keep, {edge: [B, 1, 1, 1] mask}) or None, {edge: skip dropout scale} or None)``."""
        skip = {} if self.skip_dropout is not None and self.training else None
        drop = (1.0 - drop_prob, {}) if drop_prob is not None else None
        if skip is None and drop is None:
            return None, None
        node_like = states[1][:, :, ::2, ::2] if self.reduction else states[1]  # the shape of every node's state
        for node in self.by_node:
            for e, j in node:
                x = states[j] if j < 2 else node_like
                if skip is not None and e in self.skip_rows:
                    skip[e] = F.dropout(torch.ones_like(x[:, :x.shape[1] // self.partial]), self.skip_dropout, True)
                if drop is not None:
                    drop[1][e] = drop_mask(x, drop[0])
        return drop, skip

    def _draw_noise(self, like):
        """The noise op's draws, in the per-op forward's order (edge by edge), so both forwards see the same."""
        if not self.noise_rows:
            return None
        if self.reduction:
            like = like[:, :, ::2, ::2]
        return {e: torch.randn_like(like) for e in self.noise_rows}


class DartsSupernet(ProgressiveSupernet, nn.Module):
    """quark0 ``model_search.Network``: ``forward(x, weights)`` with weights per α key.

    Optional search-time regularisation ([AMD] §4.1.2, off by default): an auxiliary tower after the second
    reduction (``auxiliary``; in training ``forward`` then returns ``(logits, logits_aux)`` and the method
    adds ``aux_weight``·CE(logits_aux)) and drop-path on every mixed edge with probability
    ``drop_path``·epoch/epochs (:meth:`on_epoch_start`, the DARTS retraining ramp).
    """

    def __init__(self, C, num_classes, layers, edges, cell_ops, keys, in_channels=3, stem_multiplier=3,
                 auxiliary=False, aux_weight=0.4, drop_path=0.0, partial=1, skip_dropout=0.0, skip_dropout_warmup=10,
                 drop_path_ramp=True, pool_bn=True):
        super().__init__()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells, self.keys, reduction_prev = nn.ModuleList(), keys, False
        self.aux_index, self.aux_weight, self.max_drop_path = 2 * layers // 3, aux_weight, drop_path
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = C_curr * 2 if reduction else C_curr
            self.cells.append(SearchCell(C_pp, C_p, C_curr, reduction, reduction_prev, edges, cell_ops(i, reduction),
                                         partial, pool_bn))
            reduction_prev = reduction
            C_pp, C_p = C_p, STEPS * C_curr
            if i == self.aux_index:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, inplace=False) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        # a device scalar filled in place each epoch, so a captured step reads the current value
        self.register_buffer("drop_prob", torch.zeros(()), persistent=False)
        self.max_skip_dropout, self.skip_dropout_warmup = skip_dropout, skip_dropout_warmup
        self.drop_path_ramp = drop_path_ramp
        for cell in self.cells:
            cell.skip_dropout = 0.0 if skip_dropout > 0 else None
        self._init_progressive(partial)

    def search_cells(self):
        return [(i, c, k) for i, (c, k) in enumerate(zip(self.cells, self.keys))]

    def on_epoch_start(self, epoch, epochs):
        """Drop-path probability of the epoch: ``drop_path``·epoch/epochs; P-DARTS's skip dropout
        p·(E−e−1)/E during its w-only warm-up epochs, p·exp(−0.2·(e − warmup)) after."""
        self.drop_prob.fill_(self.max_drop_path * epoch / epochs if self.drop_path_ramp else self.max_drop_path)
        if self.max_skip_dropout > 0:
            p, w = self.max_skip_dropout, self.skip_dropout_warmup
            rate = p * (epochs - epoch - 1) / epochs if epoch < w else p * math.exp(-(epoch - w) * 0.2)
            for cell in self.cells:
                cell.skip_dropout = rate

    def forward(self, x, weights, bypass=None):
        """``bypass``: ``{cell type: [E]}`` scales of the partial-channel bypass (None: each edge's weight sum)."""
        s0 = s1 = self.stem(x)
        drop = self.drop_prob if self.max_drop_path > 0 else None
        logits_aux = None
        for i, (cell, key) in enumerate(zip(self.cells, self.keys)):
            s0, s1 = s1, (cell(s0, s1, weights[key], drop) if bypass is None
                          else cell(s0, s1, weights[key], drop, bypass[key]))
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                check_aux_input(s1, "space.search_auxiliary", "turn it off for this dataset")
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, logits_aux) if logits_aux is not None else logits


def check_aux_input(features, key, fix):
    """The auxiliary tower pools 5×5: refuse, in one line, features after the second reduction smaller than that."""
    if min(features.shape[-2:]) < 5:
        raise UserError(f"{key}: the auxiliary tower needs at least 5×5 features after the second reduction but gets "
                        f"{tuple(features.shape[-2:])} (inputs of at least 20 px); {fix}")


class EvalCell(nn.Module):
    """Discrete cell: node = op1(h1) + op2(h2), drop-path on non-identity ops in training."""

    def __init__(self, genes, concat, C_pp, C_p, C, reduction, reduction_prev):
        super().__init__()
        self.preprocess0 = FactorizedReduce(C_pp, C) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, bias=False)
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, bias=False)
        self.indices = [j for _, j in genes]
        self.concat = list(concat)
        self._ops = nn.ModuleList(DARTS_OPS[op](C, 2 if reduction and j < 2 else 1, True) for op, j in genes)

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(len(self._ops) // 2):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self._ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0 and not isinstance(self._ops[k], Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier after the second reduction (CIFAR: pool 5/3 on 8×8; ImageNet: pool 5/2, no 2nd BN)."""

    def __init__(self, C, num_classes, imagenet=False, inplace=True):
        super().__init__()
        # quark0's in-place ReLU rewrites the cell output it reads (harmless where every consumer starts with a ReLU)
        layers = [nn.ReLU(inplace=inplace), nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
                  nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
                  nn.Conv2d(128, 768, 2, bias=False)]
        layers += [nn.ReLU(inplace=True)] if imagenet else [nn.BatchNorm2d(768), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class DartsNetwork(nn.Module):
    """NetworkCIFAR (and the ImageNet mobile variant, ``imagenet=True``) of quark0 ``model.py``.

    ``forward`` returns ``(logits, logits_aux)``; ``logits_aux`` is None unless training with the head.
    Set ``drop_path_prob`` per epoch (0.2·e/E in the DARTS protocol).
    """

    def __init__(self, cell_genes, C, num_classes, layers, auxiliary, imagenet=False, in_channels=3):
        super().__init__()
        self.drop_path_prob = 0.0
        self.aux_index = 2 * layers // 3
        if imagenet:
            self.stem0 = nn.Sequential(nn.Conv2d(in_channels, C // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(C // 2),
                                       nn.ReLU(inplace=True), nn.Conv2d(C // 2, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))
            self.stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(C, C, 3, 2, 1, bias=False), nn.BatchNorm2d(C))
            C_pp, C_p, C_curr, reduction_prev = C, C, C, True
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_channels, 3 * C, 3, padding=1, bias=False), nn.BatchNorm2d(3 * C))
            C_pp, C_p, C_curr, reduction_prev = 3 * C, 3 * C, C, False
        self.cells = nn.ModuleList()
        C_aux = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr = C_curr * 2 if reduction else C_curr
            genes, concat = cell_genes(i, reduction)
            self.cells.append(EvalCell(genes, concat, C_pp, C_p, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_pp, C_p = C_p, len(concat) * C_curr
            if i == self.aux_index:
                C_aux = C_p
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes, imagenet) if auxiliary else None
        self.imagenet = imagenet
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x):
        logits_aux = None
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                check_aux_input(s1, "retrain.auxiliary_weight", "set retrain.auxiliary_weight=0 for this dataset")
                logits_aux = self.auxiliary_head(s1)
        return self.classifier(self.global_pooling(s1).flatten(1)), logits_aux


class DartsSpace(SearchSpace):
    """DARTS-family cell space.

    Args:
        name: config name (darts, darts_7op, darts_s1..s4, darts_fixed, amended_deep).
        ops: candidate ops of every edge (α-column order); ignored when ``edge_ops`` is given.
        edge_ops: per-cell-type, per-edge op lists ``{"normal": [[...] × E], "reduce": [...]}`` (RobustDARTS S1).
        topology: ``full`` (14 edges) or ``fixed`` (8 edges, Amended-DARTS).
        shared_alpha: one α per cell type (True) or one α per cell (``amended_deep``).
        C, layers: search supernet width and depth.
        eval_C, eval_layers, auxiliary: defaults of the evaluation network (DARTS protocol: 36, 20, True).
        search_auxiliary, search_aux_weight, search_drop_path: an auxiliary tower (loss weight) and
            drop-path in the search supernet ([AMD] §4.1.2; off by default), ramped 0 → ``search_drop_path``
            over the epochs unless ``search_drop_path_ramp`` is false (SNAS: constant).
        partial_channels: K of PC-DARTS: only 1/K of each edge's input channels go through its mixed op
            (1: all, DARTS).
        edge_ops_file: a JSON ``{"normal": [[ops] × E], "reduce": [...]}`` that replaces the op lists (a P-DARTS
            stage's pruned ops, written by ``selector=prune_ops``).
        skip_dropout, skip_dropout_warmup: P-DARTS's dropout p on skip-connection outputs in search, p·(E−e−1)/E
            for the first ``skip_dropout_warmup`` epochs, then p·exp(−0.2·(e − warmup)) (per-op cells when > 0).
        search_pool_bn: a non-affine BN after the pools of the search cells (quark0, PC-DARTS; not DrNAS).
    """

    default_split = "darts"
    supports_hard_paths = True  # GDAS

    def __init__(self, name="darts", ops=None, edge_ops=None, topology="full", shared_alpha=True, C=16, layers=8,
                 eval_C=36, eval_layers=20, auxiliary=True, search_auxiliary=False, search_aux_weight=0.4,
                 search_drop_path=0.0, partial_channels=1, edge_ops_file=None, skip_dropout=0.0,
                 skip_dropout_warmup=10, search_drop_path_ramp=True, search_pool_bn=True):
        self.name, self.topology, self.shared_alpha = name, topology, shared_alpha
        self.skip_dropout, self.skip_dropout_warmup = skip_dropout, skip_dropout_warmup
        self.search_drop_path_ramp, self.search_pool_bn = search_drop_path_ramp, search_pool_bn
        if edge_ops_file:
            edge_ops = read_edge_ops(edge_ops_file)
        self.search_auxiliary, self.search_aux_weight, self.search_drop_path = (search_auxiliary, search_aux_weight,
                                                                                search_drop_path)
        self.partial_channels = partial_channels
        for key, value in (("layers", layers), ("eval_layers", eval_layers)):
            if value < 3:  # the reductions sit at 1/3 and 2/3 of the depth: fewer cells leave no normal cell
                raise UserError(f"space.{key}={value}: a DARTS-family network needs at least 3 cells (the two "
                                "reduction cells and a normal one)")
        self.C, self.layers, self.eval_C, self.eval_layers, self.auxiliary = C, layers, eval_C, eval_layers, auxiliary
        self.edges = topology_edges(topology)
        if edge_ops is None:
            if not ops:
                raise UserError(f"space {name}: give ops or edge_ops")
            edge_ops = {k: [list(ops)] * len(self.edges) for k in ("normal", "reduce")}
        self.edge_ops = {k: [list(v) for v in lists] for k, lists in edge_ops.items()}
        for k, lists in self.edge_ops.items():
            if len(lists) != len(self.edges) or len({len(v) for v in lists}) != 1:
                raise UserError(f"space {name}: edge_ops.{k} needs {len(self.edges)} lists of equal length")
            unknown = sorted({o for v in lists for o in v} - set(DARTS_OPS))
            if unknown:
                raise UserError(f"space {name}: unknown op(s) {unknown}; DARTS ops are {sorted(DARTS_OPS)}")
        self.ops = sorted({o for lists in self.edge_ops.values() for v in lists for o in v})

    def alpha_keys(self, layers=None):
        """α key of every cell of a supernet with ``layers`` cells."""
        layers = layers or self.layers
        return [self._key(i, i in (layers // 3, 2 * layers // 3)) for i in range(layers)]

    def _key(self, i, reduction):
        return ("reduce" if reduction else "normal") if self.shared_alpha else f"cell{i}"

    def alpha_shapes(self):
        K = len(self.edge_ops["normal"][0])
        return {k: (len(self.edges), K) for k in dict.fromkeys(self.alpha_keys())}

    def op_names(self, key):
        """Candidate ops per edge for an α key."""
        return self.edge_ops["reduce" if key == "reduce" or self._is_reduce_key(key) else "normal"]

    def _is_reduce_key(self, key):
        if not key.startswith("cell"):
            return False
        i = int(key[4:])
        return i in (self.layers // 3, 2 * self.layers // 3)

    def build_supernet(self, num_classes, in_channels=3):
        def cell_ops(i, reduction):
            return self.edge_ops["reduce" if reduction else "normal"]

        return DartsSupernet(self.C, num_classes, self.layers, self.edges, cell_ops, self.alpha_keys(), in_channels,
                             auxiliary=self.search_auxiliary, aux_weight=self.search_aux_weight,
                             drop_path=self.search_drop_path, partial=self.partial_channels,
                             skip_dropout=self.skip_dropout, skip_dropout_warmup=self.skip_dropout_warmup,
                             drop_path_ramp=self.search_drop_path_ramp, pool_bn=self.search_pool_bn)

    def build_network(self, genotype, num_classes, C=None, layers=None, auxiliary=None, imagenet=False, in_channels=3):
        g = self._coerce(genotype)
        layers = layers or self.eval_layers
        if isinstance(g, DeepGenotype):
            if len(g.cells_genes) != layers:
                raise UserError(f"this genotype has {len(g.cells_genes)} cells; pass layers={len(g.cells_genes)}")

            def cell_genes(i, reduction):
                return g.cells_genes[i], g.concat
        else:
            def cell_genes(i, reduction):
                return (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
        aux = self.auxiliary if auxiliary is None else auxiliary
        return DartsNetwork(cell_genes, C or self.eval_C, num_classes, layers, aux, imagenet, in_channels)

    def edge_targets(self):
        """The node each α row feeds (PC-DARTS normalises its edge weights β over a node's inputs)."""
        return [n for n, _ in self.edges]

    def sample_architecture(self, gen):
        """Per cell (type), each node takes two distinct inputs drawn uniformly among its candidate edges and a
        non-``none`` op drawn uniformly on each (Li & Talwalkar's random search with weight sharing)."""
        out = {}
        for key, shape in self.alpha_shapes().items():
            ops, w = self.op_names(key), torch.zeros(shape)
            for i in range(STEPS):
                node_edges = [e for e, (n, _) in enumerate(self.edges) if n == i]
                for j in torch.randperm(len(node_edges), generator=gen)[:2].tolist():
                    e = node_edges[j]
                    allowed = [k for k, o in enumerate(ops[e]) if o != "none"]
                    w[e, allowed[int(torch.randint(len(allowed), (1,), generator=gen))]] = 1.0
            out[key] = w
        return out

    def derive(self, weights):
        genes = {k: self._derive_cell(w.detach().float().cpu(), self.op_names(k)) for k, w in weights.items()}
        if self.shared_alpha:
            return DartsGenotype(genes["normal"], CONCAT, genes["reduce"], CONCAT)
        return DeepGenotype(tuple(genes[k] for k in self.alpha_keys()))

    def _derive_cell(self, w, op_lists):
        """DARTS rule: per node the top-2 incoming edges by strongest non-none op, then that op (quark0 order)."""
        def best(e):
            ks = [k for k, o in enumerate(op_lists[e]) if o != "none"]
            return max(ks, key=lambda k: (w[e, k].item(), -k))

        gene = []
        for i in range(STEPS):
            node_edges = [e for e, (n, _) in enumerate(self.edges) if n == i]
            top = sorted(node_edges, key=lambda e: -w[e, best(e)].item())[:2]
            gene += [(op_lists[e][best(e)], self.edges[e][1]) for e in top]
        return tuple(gene)

    def _coerce(self, genotype):
        if isinstance(genotype, (DartsGenotype, DeepGenotype)):
            return genotype
        return self.parse_genotype(genotype)

    def parse_genotype(self, text):
        text = str(text).strip()
        if text in NAMED:
            g = NAMED[text]
        elif text.startswith("|"):
            raise UserError(f"this is an NB201 arch string, not a genotype of space {self.name}; pass space=nb201")
        elif text.startswith(("Genotype", "DeepGenotype", "{")):
            g = parse_darts_text(text)
        else:
            raise UserError(f"unknown genotype {text[:60]!r}: give Genotype(...) text, JSON, or a published name "
                            f"({', '.join(sorted(NAMED))})")
        self._validate(g)
        return g

    def _validate(self, g):
        allowed = set(self.ops) - {"none"}
        for key, genes in g.cells().items():
            if len(genes) != 2 * STEPS:
                raise UserError(f"malformed DARTS genotype: {key} has {len(genes)} entries, expected {2 * STEPS}")
            for k, (op, j) in enumerate(genes):
                node = k // 2
                if op not in allowed:
                    raise UserError(f"malformed genotype for space {self.name}: {key} node {node} uses {op!r}; "
                                    f"allowed ops are {sorted(allowed)}")
                if not 0 <= j < node + 2:
                    raise UserError(f"malformed DARTS genotype: {key} node {node} takes input {j}; "
                                    f"node {node} can only take 0..{node + 1}")

    def format_genotype(self, genotype):
        return str(self._coerce(genotype))

    def _cell_count(self, op_lists):
        counts = [sum(o != "none" for o in ops) for ops in op_lists]
        total = 1
        for i in range(STEPS):
            node = [counts[e] for e, (n, _) in enumerate(self.edges) if n == i]
            total *= sum(node[a] * node[b] for a in range(len(node)) for b in range(a + 1, len(node)))
        return total

    def num_architectures(self):
        return prod(self._cell_count(self.op_names(k)) for k in dict.fromkeys(self.alpha_keys()))

    def genotype_stats(self, genotype):
        """``skip_count``: skip connections per normal cell (the mean over the normal cells where every cell has its
        own α, ``amended_deep``), the same quantity in every space; ``depth``: the deepest cell."""
        g = self._coerce(genotype)
        if isinstance(g, DartsGenotype):
            normal, cells = [g.normal], [g.normal]
        else:
            n = len(g.cells_genes)
            cells = list(g.cells_genes)
            normal = [genes for i, genes in enumerate(cells) if i not in (n // 3, 2 * n // 3)]
        skips = sum(op == "skip_connect" for genes in normal for op, _ in genes) / len(normal)
        return {"skip_count": int(skips) if skips == int(skips) else round(skips, 3),
                "depth": max(cell_depth(genes) for genes in cells)}


def cell_depth(genes):
    """Longest path in a DARTS cell (methods.md §6.6): inputs depth 0, node = 1 + max of its inputs, +1 for the output."""
    depth = [0, 0]
    for i in range(len(genes) // 2):
        depth.append(1 + max(depth[genes[2 * i][1]], depth[genes[2 * i + 1][1]]))
    return 1 + max(depth[2:])


__all__ = ["DartsSpace", "cell_depth", "comb"]
