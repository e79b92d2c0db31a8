"""PC-DARTS (Xu et al., ICLR 2020: partial channel connections; methods.md §4.10; reference yuhuixu1993/PC-DARTS
``train_search.py`` / ``model_search.py``).

Two parts. Partial channels are the space's (``space.partial_channels=4``: 1/K of each edge's input goes
through its mixed op, the rest bypasses it, then the channels are shuffled). Edge normalisation is the
method's: one more parameter β per edge, softmax-normalised over each node's inputs, scales the whole edge
output and the derivation score; it is folded into the mixing weights as w[e, o] = softmax(α_e)_o · β̂_e (the
cell scales its bypass by the row sum, = β̂_e). α and β start updating at epoch ``arch_start_epoch`` (15).
"""

import torch
import torch.nn.functional as F

from ..errors import UserError
from .base import Method, NodeSoftmax
from .darts import Darts


class PcDarts(Darts):
    """PC-DARTS's edge normalisation and schedule on first-order DARTS (α step first).

    Args:
        edge_normalization: learn β (True) or mix with softmax(α) alone.
        arch_start_epoch: first epoch with α/β steps (15).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    distributed = True  # several processes: DARTS's steps on the first 1/K channels (no random draw)

    def __init__(self, supernet, space, name="pc_darts", w_lr=0.1, w_lr_min=0.0, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=6e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 arch_first=True, train_arch=True, lr_offset=1, edge_normalization=True, arch_start_epoch=15):
        if not hasattr(space, "edge_targets"):
            raise UserError(f"method=pc_darts normalises edges over a node's inputs; space {space.name} has no such "
                            "edges (use nb201 or a DARTS-family space)")
        device = next(supernet.parameters()).device
        self.edge_normalization = edge_normalization
        self.edge_norm = NodeSoftmax(space, device)  # β̂: softmax of β over the edges into each node
        self.betas = ({k: torch.nn.Parameter(1e-3 * torch.randn(shape[0], device=device))
                       for k, shape in space.alpha_shapes().items()} if edge_normalization else {})
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset,
                         arch_start_epoch=arch_start_epoch)

    def arch_parameters(self):
        return [self.alphas[k] for k in sorted(self.alphas)] + [self.betas[k] for k in sorted(self.betas)]

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        if not self.edge_normalization:
            return {k: F.softmax(a, dim=-1) for k, a in alphas.items()}
        return {k: F.softmax(a, dim=-1) * self.edge_norm(self.betas[k])[:, None] for k, a in alphas.items()}

    derive_weights = Method.derive_weights  # softmax(α)·β̂, the score PC-DARTS ranks edges and ops by

    def state_dict(self):
        return {**super().state_dict(), "betas": {k: v.detach().clone() for k, v in self.betas.items()}}

    def load_state_dict(self, state):
        with torch.no_grad():
            for k, v in state.get("betas", {}).items():
                self.betas[k].copy_(v)
        super().load_state_dict(state)
