"""TSE-DARTS (Fil et al., training-speed estimation instead of a validation loss; methods.md §4.3).

Every group of T = ``inner_steps`` consecutive train batches: roll T SGD steps out on a copy of the
weights *and* the weight-optimiser state, summing the direct gradients ∂L_tr/∂α of every step; then
take one Adam step on α with that sum, and train the real weights on the same T batches with the new
α. No validation data is used (``merge_train_val`` also trains on the other half of the split).
"""

import copy

import torch

from ..distributed import average
from .darts import Darts


class TseDarts(Darts):
    """TSE α-gradient rule on the softmax relaxation.

    Args:
        inner_steps: T, the rollout length (100 in rubinxin/TSE; the last group of an epoch may be shorter).
        merge_train_val: search on one dataset made of the train and valid halves (the repo's
            ``merge_train_val_supernet``): the search loop merges the stream's splits, so an epoch walks both
            halves in one shuffled order and every rollout and w step draws from the union.
        Other arguments: as :class:`~nasrun.methods.darts.Darts`; ``grad_clip`` applies to the real w steps
        (the reference uses none).
    """

    distributed = True  # several processes: the rollout's gradients averaged at each of its steps

    def __init__(self, supernet, space, name="tse_darts", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=True,
                 w_weight_decay=5e-4, grad_clip=None, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 train_arch=True, inner_steps=100, merge_train_val=False, lr_offset=0, relaxation="softmax"):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, False, False, 0.01, train_arch, lr_offset, relaxation)
        self.group_size, self.merge_train_val = inner_steps, merge_train_val

    def graph_state(self):
        state = super().graph_state()
        if getattr(self, "_shadow_net", None) is not None:  # the rollout's copy of w, its SGD and the α-gradient sum
            state.modules.append(self._shadow_net)
            state.optimizers.append(self._shadow_opt)
            state.tensors.extend(self._tse_grad)
        return state

    def step(self, train_batch, valid_batch):
        return self.step_group([(train_batch, valid_batch)])

    def device_step(self, train_batch, valid_batch):
        return self.weight_step(train_batch)

    def step_group(self, batches):
        """One TSE update over a group of batches; returns mean train loss and counts."""
        trains = [t for t, _ in batches]
        if self.train_arch:
            self.tse_arch_step(trains)
        loss, correct, n = 0.0, 0, 0
        for x, y in trains:
            out = self.graphs.run("weight_step", self.weight_step, self.graph_key, (x, y))
            loss, correct, n = loss + out["train_loss"] * len(y), correct + out["train_correct"], n + len(y)
        return {"train_loss": loss / n, "train_correct": correct, "train_n": n}

    def tse_arch_step(self, trains):
        """α.grad = Σ_t ∂L_tr^t/∂α over a rollout on a copy of w and its optimiser; then one Adam step.

        The copy (``shadow``) is made once and overwritten at every group: weights, BN buffers, the
        weight optimiser's hyper-parameters and momentum; its steps run from a CUDA graph when enabled.
        """
        shadow, opt = self._shadow()
        with torch.no_grad():
            torch._foreach_copy_(list(shadow.parameters()), list(self.supernet.parameters()))
            torch._foreach_copy_(list(shadow.buffers()), list(self.supernet.buffers()))
            for acc in self._tse_grad:
                acc.zero_()
        for p_shadow, p in zip(shadow.parameters(), self.supernet.parameters()):
            buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
            if buf is None:  # no real step yet: the copy starts without momentum, as a fresh optimiser would
                opt.state.pop(p_shadow, None)
            elif "momentum_buffer" in opt.state.get(p_shadow, {}):
                opt.state[p_shadow]["momentum_buffer"].copy_(buf)
            else:
                opt.state[p_shadow]["momentum_buffer"] = buf.clone()
        for g_shadow, g in zip(opt.param_groups, self.w_opt.param_groups):
            g_shadow.update({k: v for k, v in g.items() if k != "params"})
        for x, y in trains:
            self.graphs.run("rollout_step", self.rollout_step, self.graph_key, (x, y))
        for a, g in zip(self.arch_parameters(), self._tse_grad):
            a.grad = g
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)

    def rollout_step(self, batch):
        """One SGD step of the shadow weights, adding ∂L_tr/∂α to the group's sum (device work only)."""
        shadow, opt = self._shadow()
        params = list(shadow.parameters())
        loss, _ = self.loss(*batch, self.edge_weights(), model=shadow)
        grads = average(torch.autograd.grad(loss, params + self.arch_parameters()))
        for p, g in zip(params, grads):
            p.grad = g
        torch._foreach_add_(self._tse_grad, list(grads[len(params):]))
        opt.step()
        return {"rollout_loss": loss.detach()}

    def _shadow(self):
        if getattr(self, "_shadow_net", None) is None:
            self._shadow_net = copy.deepcopy(self.supernet)
            self._shadow_opt = torch.optim.SGD(self._shadow_net.parameters(), lr=0.0)
            self._tse_grad = [torch.zeros_like(a) for a in self.arch_parameters()]
        return self._shadow_net, self._shadow_opt
