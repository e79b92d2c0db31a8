"""DrNAS (Chen et al., ICLR 2021: Dirichlet neural architecture search; methods.md §4.10; reference
xiangning-chen/DrNAS ``201-space/train_search.py``).

The architecture distribution of each edge is a Dirichlet with concentration β = ELU(α) + 1. Every forward
mixes the ops with a fresh sample w ~ Dir(β) drawn by reparameterisation, so ∂L/∂α flows through the
sample (the pathwise gradient of the Gamma draws). The anchor regulariser keeps β near the uniform prior:
``l2`` is Adam weight decay ``reg_scale`` on α (the reference default), ``kl`` adds reg_scale·KL(Dir(β) ‖
Dir(1)) to the α step's loss. The genotype is read from softmax(α) (argmax α).

The progressive variant (``stage_*`` arguments of :class:`~nasrun.methods.darts.Darts`; reference
``train_search_progressive.py``) searches a partial-channel supernet in two stages, pruning each edge to its
strongest ops and widening the partial channels between them.
"""

import torch
from torch.distributions import Dirichlet, kl_divergence

from ..distributed import average
from ..errors import UserError
from .darts import Darts


class DrNas(Darts):
    """DrNAS on top of first-order DARTS (α step first, as the reference).

    Args:
        reg_type: ``l2`` (Adam weight decay ``reg_scale`` on α) or ``kl`` (the KL anchor in the α loss).
        reg_scale: strength of the anchor regulariser (1e-3).
        Other arguments: as :class:`~nasrun.methods.darts.Darts` (``arch_weight_decay`` is set by ``reg_type``).
    """

    distributed = True  # several processes: α gradient averaged; Dirichlet samples from one seed on every rank

    def __init__(self, supernet, space, name="drnas", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_first=True,
                 train_arch=True, lr_offset=0, reg_type="l2", reg_scale=1e-3, arch_start_epoch=0, stage_epochs=None,
                 stage_partial_channels=None, stage_keep=None, stage_lr_restart=False, grad_clip_scope="weights"):
        if reg_type not in ("l2", "kl"):
            raise UserError(f"method.reg_type={reg_type!r}: choose l2 or kl")
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, reg_scale if reg_type == "l2" else 0.0, arch_first, False, 0.01, train_arch,
                         lr_offset, relaxation="dirichlet", arch_start_epoch=arch_start_epoch, stage_epochs=stage_epochs,
                         stage_partial_channels=stage_partial_channels, stage_keep=stage_keep,
                         stage_lr_restart=stage_lr_restart, grad_clip_scope=grad_clip_scope)
        self.reg_type, self.reg_scale = reg_type, reg_scale

    def kl_reg(self):
        """reg_scale · Σ_edges KL(Dir(β) ‖ Dir(1))."""
        return self.reg_scale * sum(kl_divergence(Dirichlet(self.concentration(a), validate_args=False),
                                                  Dirichlet(torch.ones_like(a), validate_args=False)).sum()
                                    for a in self.arch_parameters())  # no validation: it reads the host

    def first_order_grad(self, valid_batch):
        x, y = valid_batch
        loss, logits = self.loss(x, y, self.edge_weights())
        if self.reg_type == "kl":
            loss = loss + self.kl_reg()
        return average(list(torch.autograd.grad(loss, self.arch_parameters()))), loss, logits
