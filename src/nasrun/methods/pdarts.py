"""P-DARTS (Chen et al., ICCV 2019: progressive DARTS; reference chenxin061/pdarts ``train_search.py``), one
stage of it.

A P-DARTS search is three stages of 25 epochs on ever deeper supernets (5, 11, 17 cells) whose edges keep
fewer ops (8 → 5 → 3; ``selector=prune_ops`` writes the survivors, the next stage reads them with
``space.edge_ops_file``); ``scripts/tables/pdarts_table.sh`` chains them and the last stage's
``selector=pdarts_final`` keeps at most M skip connections. Within a stage this method is first-order
DARTS with the α step first, no α step in the first ``arch_start_epoch`` epochs, and the α gradient clipped
to norm ``arch_grad_clip``; the skip dropout is the space's (``space.skip_dropout``).
"""

import torch

from .darts import Darts


class PDarts(Darts):
    """One P-DARTS stage.

    Args:
        arch_start_epoch: epochs of weights-only training before α steps begin (10).
        arch_grad_clip: max norm of the α gradient (5; null: none).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    def __init__(self, supernet, space, name="pdarts", w_lr=0.025, w_lr_min=0.0, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=6e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 arch_first=True, train_arch=True, lr_offset=1, arch_start_epoch=10, arch_grad_clip=5.0):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset)
        self.arch_start_epoch, self.arch_grad_clip, self.arch_enabled = arch_start_epoch, arch_grad_clip, train_arch

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        self.train_arch = self.arch_enabled and epoch >= self.arch_start_epoch

    def graph_key(self):
        return (super().graph_key(), self.train_arch)  # the captured step does (or skips) the α step

    def arch_step(self, train_batch, valid_batch):
        grads, loss, logits = self.arch_grad(train_batch, valid_batch)
        for a, g in zip(self.arch_parameters(), grads):
            a.grad = g
        if self.arch_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.arch_parameters(), self.arch_grad_clip)
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        return {"valid_loss": loss.detach(), "valid_correct": (logits.argmax(1) == valid_batch[1]).sum()}
