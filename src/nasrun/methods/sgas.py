"""SGAS (Li et al., CVPR 2020: sequential greedy architecture search; reference lightaime/sgas
``cnn/train_search.py``).

DARTS first order, plus a greedy decision after epoch ``warmup_dec_epoch`` and every ``decision_freq`` epochs
from then on: per cell type, the undecided edge with the best score gets its strongest non-``none`` op for good
(its mixing weight becomes that one-hot; its α row is frozen, as the reference's per-edge α) and, in DARTS
cells, a node with two decided inputs drops its other inputs (their rows frozen too). Criterion 1 scores an edge
by normalise(edge importance) · normalise(selection certainty), importance = Σ of its non-``none`` softmax(α)
and certainty = 1 − the normalised entropy of their renormalised distribution; criterion 2 (``use_history``)
multiplies by normalise(selection stability), the mean histogram intersection with the last ``history_size``
epochs' distributions. ``normalise`` is min-max over all edges of the cell type.
"""


import torch
import torch.nn.functional as F

from ..errors import UserError
from .darts import Darts

UNDECIDED, PRUNED = -1, -2


class Sgas(Darts):
    """SGAS on first-order DARTS (α step first).

    Args:
        warmup_dec_epoch: the first decision comes after this epoch (9).
        decision_freq: epochs between decisions (5; 7 with criterion 2 in the reference README).
        use_history: criterion 2 (selection stability) instead of criterion 1.
        history_size: epochs of distributions the stability averages over (4).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    distributed = True  # several processes: DARTS's steps; its decisions read α, the same on every rank

    def __init__(self, supernet, space, name="sgas", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 arch_first=True, train_arch=True, lr_offset=1, warmup_dec_epoch=9, decision_freq=5, use_history=False,
                 history_size=4):
        if not hasattr(space, "edge_targets"):
            raise UserError(f"method=sgas decides edges of a cell; space {space.name} has no such edges "
                            "(use nb201 or a DARTS-family space)")
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset)
        self.warmup_dec_epoch, self.decision_freq = warmup_dec_epoch, decision_freq
        self.use_history, self.history_size = use_history, history_size
        self.two_inputs = isinstance(getattr(space, "edges", [None])[0], tuple)  # DARTS cells keep two inputs per node
        self.selected = {k: [UNDECIDED] * shape[0] for k, shape in space.alpha_shapes().items()}
        self.history = {k: [] for k in self.alphas}
        self.decisions, self.last_decided = [], -1
        self._fixed = {}

    # --- mixing weights ---------------------------------------------------------------------------------------
    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        out = {}
        for k, a in alphas.items():
            w = F.softmax(a, dim=-1)
            if k in self._fixed:
                rows, values = self._fixed[k]
                w = w.index_copy(0, rows, values.to(w.dtype))
            out[k] = w
        return out

    def _refresh_fixed(self):
        """The decided rows as device tensors (one-hot, or zero when pruned), made once per decision, not per step."""
        self._fixed = {}
        for k, a in self.alphas.items():
            fixed = [(e, s) for e, s in enumerate(self.selected[k]) if s != UNDECIDED]
            if fixed:
                values = torch.zeros(len(fixed), a.shape[-1], device=a.device)
                for i, (_, s) in enumerate(fixed):
                    if s != PRUNED:
                        values[i, s] = 1.0
                self._fixed[k] = (torch.tensor([e for e, _ in fixed], device=a.device), values)

    def arch_step(self, train_batch, valid_batch):
        """The α step, with the decided rows held where they were: the reference keeps one α tensor per edge and
        turns a decided edge's off (``requires_grad = False``, its grad set to None before Adam), so Adam's weight
        decay no longer moves it; those rows still enter the min-max normalisation of later decisions."""
        held = {k: self.alphas[k].detach()[rows].clone() for k, (rows, _) in self._fixed.items()}
        out = super().arch_step(train_batch, valid_batch)
        with torch.no_grad():
            for k, (rows, _) in self._fixed.items():
                self.alphas[k].index_copy_(0, rows, held[k])
        return out

    def derive_weights(self):
        return {k: v.detach() for k, v in self.edge_weights().items()}

    # --- decisions --------------------------------------------------------------------------------------------
    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        if epoch >= 1 and self.last_decided < epoch - 1:  # decide after the epoch that just ended, once
            self.decide(epoch - 1)
            self.last_decided = epoch - 1
            self._refresh_fixed()
            self.reset_graphs()  # the mixing weights' fixed rows changed

    def scores(self, key):
        """SGAS's criterion per edge (all edges; the decision masks the decided ones)."""
        mat = F.softmax(self.alphas[key].detach(), dim=-1).cpu().double()
        ops = self.space.op_names(key)
        keep = torch.tensor([[o != "none" for o in row] for row in ops])
        importance = (mat * keep).sum(-1)
        probs = (mat * keep) / importance[:, None]
        n_ops = keep.sum(-1).double()
        entropy = -(probs * probs.clamp_min(1e-300).log()).sum(-1) / n_ops.log()
        score = normalise(importance) * normalise(1 - entropy)
        if self.use_history:
            hist = self.history[key]
            stability = (torch.stack([torch.minimum(h, probs).sum(-1) for h in hist]).mean(0) if hist
                         else torch.zeros(len(probs), dtype=probs.dtype))
            hist.append(probs)
            if len(hist) > self.history_size:
                hist.pop(0)
            score = score * normalise(stability)
        return score, probs

    def decide(self, epoch):
        """SGAS's edge decision after ``epoch`` for every cell type (the scores and history move every epoch)."""
        for key in sorted(self.alphas):
            score, probs = self.scores(key)
            candidates = [e for e, s in enumerate(self.selected[key]) if s == UNDECIDED]
            due = epoch >= self.warmup_dec_epoch and (epoch - self.warmup_dec_epoch) % self.decision_freq == 0
            if not candidates or not due:
                continue
            edge = max(candidates, key=lambda e: (score[e].item(), -e))
            op = int(probs[edge].argmax())
            self.selected[key][edge] = op
            pruned = self._prune(key)
            self.decisions.append({"epoch": epoch, "cell": key, "edge": edge, "op": self.space.op_names(key)[edge][op],
                                   "pruned": pruned})

    def _prune(self, key):
        """A node of a DARTS cell with two decided inputs drops its other inputs (``check_edges``)."""
        if not self.two_inputs:
            return []
        pruned, targets = [], self.space.edge_targets()
        for node in sorted(set(targets)):
            rows = [e for e, t in enumerate(targets) if t == node]
            if sum(self.selected[key][e] >= 0 for e in rows) >= 2:
                for e in rows:
                    if self.selected[key][e] == UNDECIDED:
                        self.selected[key][e] = PRUNED
                        pruned.append(e)
        return pruned

    def epoch_metrics(self):
        return {"decided_edges": sum(s >= 0 for rows in self.selected.values() for s in rows)}

    def state_dict(self):
        return {**super().state_dict(), "selected": {k: list(v) for k, v in self.selected.items()},
                "history": {k: [h.clone() for h in v] for k, v in self.history.items()},
                "decisions": list(self.decisions), "last_decided": self.last_decided}

    def load_state_dict(self, state):
        self.selected = {k: list(v) for k, v in state["selected"].items()}
        self.history = {k: [h.clone() for h in v] for k, v in state["history"].items()}
        self.decisions, self.last_decided = list(state["decisions"]), state["last_decided"]
        self._refresh_fixed()
        super().load_state_dict(state)


def normalise(v):
    """Min-max normalisation to [0, 1]; all zeros when v is constant (SGAS ``utils.normalize``)."""
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)
