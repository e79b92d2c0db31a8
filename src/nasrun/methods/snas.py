"""SNAS (Xie et al., ICLR 2019: stochastic neural architecture search; reference SNAS-Series/SNAS
``train_search.py`` / ``model_search.py``), without its resource constraint.

Single level: each step draws one relaxed one-hot sample per edge, w = softmax((log α + g)/τ) with Gumbel
noise g, and one backward pass of the training loss updates both the weights and α (the gradient reaches α
through the relaxed sample). There is no validation split: the search trains on the whole training set
(``merge_train_val``). τ falls linearly from ``temp`` to ``temp_min`` over the reference's 150 epochs,
(1 − e/150)(τ₀ − τ_min) + τ_min. The α gradient is clipped to norm 10 as the reference does.
"""

import torch
import torch.nn.functional as F

from .darts import Darts


class Snas(Darts):
    """SNAS with the resource constraint off.

    Args:
        temp, temp_min: the temperature of epoch 0 and its floor (1 → 0.03).
        temp_epochs: epochs of the linear decay (the reference hard-codes 150).
        merge_train_val: train on search-train ∪ search-valid (the reference uses the whole training set).
        Other arguments: as :class:`~nasrun.methods.darts.Darts` (``arch_first`` does not apply: one joint step).
    """

    def __init__(self, supernet, space, name="snas", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 train_arch=True, lr_offset=1, temp=1.0, temp_min=0.03, temp_epochs=150, merge_train_val=True):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, False, False, 0.01, train_arch, lr_offset)
        self.temp0, self.temp_min, self.temp_epochs, self.merge_train_val = temp, temp_min, temp_epochs, merge_train_val
        device = next(supernet.parameters()).device
        self._temp = torch.tensor(temp, device=device)  # filled in place each epoch: a captured step reads it
        self._gumbel = {k: torch.zeros_like(a) for k, a in self.alphas.items()}
        self.temp = temp

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        self.temp = max((1 - epoch / self.temp_epochs) * (self.temp0 - self.temp_min) + self.temp_min, self.temp_min)
        self._temp.fill_(self.temp)

    def prepare_step(self):
        """The step's Gumbel noise −log(−log u), drawn on the CPU generator."""
        for buf in self._gumbel.values():
            u = torch.rand(buf.shape, dtype=buf.dtype).clamp_min(torch.finfo(buf.dtype).tiny)
            buf.copy_(-(-u.log()).log(), non_blocking=True)

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        return {k: F.softmax((a + self._gumbel[k]) / self._temp, dim=-1) for k, a in alphas.items()}

    def hessian_weights(self):
        return {k: F.softmax(a, dim=-1) for k, a in self.alphas.items()}

    def device_step(self, train_batch, valid_batch):
        """One joint step: the training loss at the relaxed sample, backward to w and α, both optimisers step."""
        x, y = train_batch
        self.w_opt.zero_grad(set_to_none=True)
        self.arch_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(x, y, self.edge_weights())
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.w_opt.step()
        if self.train_arch:
            torch.nn.utils.clip_grad_norm_(self.arch_parameters(), 10.0)
            self.arch_opt.step()
        return {"train_loss": loss.detach(), "train_correct": (logits.argmax(1) == y).sum()}

    def epoch_metrics(self):
        return {"tau": self.temp}
