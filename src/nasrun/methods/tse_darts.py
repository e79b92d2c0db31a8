"""TSE-DARTS (Fil et al., training-speed estimation instead of a validation loss; methods.md §4.3).

Every group of T = ``inner_steps`` consecutive train batches: roll T SGD steps out on a copy of the
weights *and* the weight-optimiser state, summing the direct gradients ∂L_tr/∂α of every step; then
take one Adam step on α with that sum, and train the real weights on the same T batches with the new
α. No validation data is used (``merge_train_val`` also trains on the other half of the split).
"""

import copy

import torch

from .darts import Darts


class TseDarts(Darts):
    """TSE α-gradient rule on the softmax relaxation.

    Args:
        inner_steps: T, the rollout length (100 in rubinxin/TSE; the last group of an epoch may be shorter).
        merge_train_val: also train on the valid half's batches (the repo's ``merge_train_val_supernet``).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`; ``grad_clip`` applies to the real w steps
        (the reference uses none).
    """

    def __init__(self, supernet, space, name="tse_darts", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=True,
                 w_weight_decay=5e-4, grad_clip=None, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 train_arch=True, inner_steps=100, merge_train_val=False):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, False, False, 0.01, train_arch)
        self.group_size, self.merge_train_val = inner_steps, merge_train_val

    def step(self, train_batch, valid_batch):
        return self.step_group([(train_batch, valid_batch)])

    def step_group(self, batches):
        """One TSE update over a group of batches; returns mean train loss and counts."""
        trains = [t for t, _ in batches] + ([v for _, v in batches if v is not None] if self.merge_train_val else [])
        if self.train_arch:
            self.tse_arch_step(trains)
        loss, correct, n = 0.0, 0, 0
        for x, y in trains:
            out = self.weight_step((x, y))
            loss, correct, n = loss + out["train_loss"] * len(y), correct + out["train_correct"], n + len(y)
        return {"train_loss": loss / n, "train_correct": correct, "train_n": n}

    def tse_arch_step(self, trains):
        """α.grad = Σ_t ∂L_tr^t/∂α over a rollout on a copy of w and its optimiser; then one Adam step."""
        shadow = copy.deepcopy(self.supernet)
        opt = torch.optim.SGD(shadow.parameters(), lr=0.0)
        # deepcopy: load_state_dict keeps same-device tensors, so the rollout would update the real momentum in place
        opt.load_state_dict(copy.deepcopy(self.w_opt.state_dict()))
        for a in self.arch_parameters():
            a.grad = None
        for x, y in trains:
            opt.zero_grad(set_to_none=True)
            loss, _ = self.loss(x, y, self.edge_weights(), model=shadow)
            loss.backward()  # α.grad accumulates the sum of the direct gradients
            opt.step()
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
