"""GAEA (Li, Khodak, Balcan & Talwalkar, ICLR 2021: geometry-aware gradient algorithms for NAS; reference
liamcli/gaea_release ``cnn/architect/architect_edarts.py``).

The architecture parameters live on the simplex and mix the ops directly (no softmax): α starts uniform and
each step is exponentiated gradient, mirror descent with the entropy as mirror map,

    α ← normalise(max(α ⊙ exp(−η ∇_α L), 1e-5))   (row by row: the reference's clamp, then ÷ the row sum),

which drives α towards sparse rows. ``single_level`` is the paper's ERM form: the α step takes its gradient on
training data (an independent batch of the same training set the weights see) instead of a held-out split.
With ``learn_edges`` (GAEA PC-DARTS) each edge also carries a weight that is updated the same way and
normalised over the edges into its node; an edge mixes with α_e · edge_e, and the genotype is read from that
product. With partial channels the bypassed channels are scaled by edge_e alone (:meth:`Gaea.bypass_scales`), as the
reference multiplies the whole edge output by it: scaling them by the weight sum Σ α_e·edge_e, as PC-DARTS's fold
does, would give every α of the row the same extra gradient (PC-DARTS's softmax cancels it, GAEA's α has none).
The α step comes first in each iteration; there is no Adam and no softmax anywhere in it.
"""

import math

import torch

from ..distributed import average
from ..errors import UserError
from .base import Method, NodeSoftmax
from .darts import Darts


class Gaea(Darts):
    """GAEA DARTS / GAEA PC-DARTS: exponentiated-gradient α (and edge) updates on first-order DARTS.

    Args:
        arch_lr: η of the exponentiated-gradient step (0.1).
        edge_lr: η of the edge weights' step (``learn_edges`` only; 0.1).
        entropic_reg: weight of Σ α log(α·K) (the KL to uniform) added to the α loss (the reference's
            ``arch_weight_decay``, 0).
        arch_grad_clip: max norm of the architecture gradient before the update (null: none).
        single_level: ERM form, α's gradient on training data (the search merges its splits, or keeps the train
            split alone where the valid split holds test images).
        learn_edges: learn per-edge weights normalised over each node's inputs (GAEA PC-DARTS).
        Other arguments: as :class:`~nasrun.methods.darts.Darts` (first order, α step first).
    """

    distributed = True  # several processes: its α/edge gradient is averaged before the exponentiated-gradient step

    def __init__(self, supernet, space, name="gaea", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=0.1, edge_lr=0.1, entropic_reg=0.0, arch_grad_clip=None,
                 single_level=False, learn_edges=False, train_arch=True, lr_offset=0, lr_epochs=None,
                 arch_start_epoch=0):
        if learn_edges and not hasattr(space, "edge_targets"):
            raise UserError(f"method.learn_edges normalises edge weights over a node's inputs; space {space.name} "
                            "has no such edges (use nb201 or a DARTS-family space, or method.learn_edges=false)")
        for key, value in (("arch_lr", arch_lr), ("edge_lr", edge_lr), ("entropic_reg", entropic_reg)):
            if not isinstance(value, (int, float)) or value < 0:
                raise UserError(f"method.{key}={value!r}: give a number ≥ 0")
        self.learn_edges, self.single_level = learn_edges, single_level
        self.edges = {}  # before the base class lists the architecture parameters
        self.eta, self.edge_lr, self.entropic_reg = float(arch_lr), float(edge_lr), float(entropic_reg)
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, (0.5, 0.999), 0.0, True, False, 0.01, train_arch, lr_offset,
                         arch_start_epoch=arch_start_epoch, arch_grad_clip=arch_grad_clip, lr_epochs=lr_epochs)
        if learn_edges:
            device = next(supernet.parameters()).device
            self.node_softmax = NodeSoftmax(space, device)
            uniform = self.node_softmax(torch.zeros(len(space.edge_targets()), device=device))  # 1/fan-in
            self.edges = {k: torch.nn.Parameter(uniform.clone()) for k in self.alphas}

    def init_alphas(self, scale=None):
        """α uniform on each row's simplex, 1/K (deterministic, as the reference)."""
        device = next(self.supernet.parameters()).device
        self.alphas = {k: torch.nn.Parameter(torch.full(shape, 1.0 / shape[-1], device=device))
                       for k, shape in self.space.alpha_shapes().items()}

    def optimizers(self):
        return [self.w_opt]  # α and the edges are updated in closed form, not by an optimiser

    def graph_key(self):
        return (super().graph_key(), self.eta, self.edge_lr, self.entropic_reg)

    def arch_parameters(self):
        return [self.alphas[k] for k in sorted(self.alphas)] + [self.edges[k] for k in sorted(self.edges)]

    def bypass_scales(self):
        """The partial-channel bypass is scaled by the edge weight alone, as in the reference (the weight sum α·edge
        would pass every α of the row the same gradient: GAEA's α has no softmax to cancel it)."""
        return dict(self.edges) if self.edges else None

    def edge_weights(self, alphas=None):
        """α itself (already on the simplex), times the edge weight with ``learn_edges``."""
        alphas = self.alphas if alphas is None else alphas
        return {k: a * self.edges[k][:, None] if k in self.edges else a for k, a in alphas.items()}

    derive_weights = Method.derive_weights  # the mixing weights themselves (Darts reads softmax(α))

    def first_order_grad(self, valid_batch):
        x, y = valid_batch
        loss, logits = self.loss(x, y, self.edge_weights())
        if self.entropic_reg:
            loss = loss + self.entropic_reg * sum((a * torch.log(a * a.shape[-1])).sum() for a in self.alphas.values())
        return average(list(torch.autograd.grad(loss, self.arch_parameters()))), loss, logits

    def arch_step(self, train_batch, valid_batch):
        """One exponentiated-gradient step on α (and the edges) with ∇ of the valid loss (the train loss when
        ``single_level``: the search then hands over a training batch as the second batch)."""
        grads, loss, logits = self.first_order_grad(valid_batch)
        params = self.arch_parameters()
        for p, g in zip(params, grads):
            p.grad = g
        if self.arch_grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.arch_grad_clip)
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        n_alpha = len(self.alphas)
        floor = math.log(1e-5)
        with torch.no_grad():
            # normalise(max(α·e^{−ηg}, 1e-5)) = softmax(max(log α − ηg, log 1e-5)): the reference's update, in a
            # form that cannot overflow for large η·g
            for a, g in zip(self.arch_parameters()[:n_alpha], grads[:n_alpha]):
                a.copy_(torch.softmax((torch.log(a) - self.eta * g).clamp_(min=floor), dim=-1))
            for e, g in zip(self.arch_parameters()[n_alpha:], grads[n_alpha:]):  # e·e^{−ηg} normalised per node
                e.copy_(self.node_softmax(torch.log(e) - self.edge_lr * g))
        return {"valid_loss": loss.detach(), "valid_correct": (logits.argmax(1) == valid_batch[1]).sum()}

    def state_dict(self):
        return {**super().state_dict(), "edges": {k: v.detach().clone() for k, v in self.edges.items()}}

    def load_state_dict(self, state):
        with torch.no_grad():
            for k, v in state.get("edges", {}).items():
                self.edges[k].copy_(v)
        super().load_state_dict(state)
