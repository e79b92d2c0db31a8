"""Amended-DARTS (Bi et al., "Stabilizing DARTS with Amended Gradient Estimation"; methods.md §4.4).

α.grad = g1 − η·z with g1 = ∇_α L_val(w, α), v = ∇_w L_val, u = H·v (H = ∇²_w L_tr) and
z = ∇²_{α,w} L_tr · u, all at the current weights (no virtual step). ``exact=False`` forms u and z by
two central differences (the third-party re-implementation the spec follows); ``exact=True`` uses
double back-propagation and serves to validate them on small networks.
"""

import torch

from ..distributed import average
from .darts import Darts


class AmendedDarts(Darts):
    """DARTS with the amended second-order term.

    Args:
        eta: amending coefficient η (paper default 0.1).
        exact: exact Hessian products by double back-propagation instead of finite differences.
        Other arguments: as :class:`~nasrun.methods.darts.Darts` (``fd_radius`` sets both differences).
    """

    distributed = True  # several processes: every gradient and Hessian product averaged (each rank's on its shard)

    def __init__(self, supernet, space, name="amended_darts", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9,
                 w_nesterov=False, w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999),
                 arch_weight_decay=1e-3, arch_first=True, fd_radius=0.01, train_arch=True, eta=0.1, exact=False,
                 lr_offset=0, relaxation="softmax"):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, fd_radius, train_arch, lr_offset,
                         relaxation)
        self.eta, self.exact = eta, exact

    def arch_grad(self, train_batch, valid_batch):
        alphas = self.arch_parameters()
        names, params, buffers = self.functional_state()
        loss_val, logits = self.loss(*valid_batch, self.edge_weights(), params={**dict(zip(names, params)), **buffers})
        grads = average(torch.autograd.grad(loss_val, list(alphas) + list(params)))
        g1, v = grads[: len(alphas)], grads[len(alphas):]
        z = self.exact_term(train_batch, v) if self.exact else self.fd_term(train_batch, v)
        return [g - self.eta * zz for g, zz in zip(g1, z)], loss_val, logits

    def _at(self, batch, shift, scale, wrt):
        """Gradient of L_tr at w + scale·shift w.r.t. ``wrt`` ('w' or 'alpha')."""
        names, params, buffers = self.functional_state()
        with torch.no_grad():
            moved = torch._foreach_add(list(params), torch._foreach_mul(list(shift), scale))
            w = {n: p.requires_grad_(wrt == "w") for n, p in zip(names, moved)}
        weights = self.edge_weights() if wrt == "alpha" else {k: v.detach() for k, v in self.edge_weights().items()}
        loss, _ = self.loss(*batch, weights, params={**w, **buffers})
        return average(torch.autograd.grad(loss, self.arch_parameters() if wrt == "alpha" else [w[n] for n in names]))

    def fd_term(self, train_batch, v):
        """z ≈ ∇²_{α,w}L_tr · (H v) by two central differences with ε = r/‖·‖."""
        r = self.fd_radius / _norm(v)
        u = torch._foreach_div(torch._foreach_sub(list(self._at(train_batch, v, r, "w")),
                                                  list(self._at(train_batch, v, -r, "w"))), 2 * r)
        r2 = self.fd_radius / _norm(u)
        return [(a - b) / (2 * r2) for a, b in zip(self._at(train_batch, u, r2, "alpha"),
                                                   self._at(train_batch, u, -r2, "alpha"))]

    def exact_term(self, train_batch, v):
        """z = ∇²_{α,w}L_tr · (H v) by double back-propagation."""
        names, params, buffers = self.functional_state()
        loss, _ = self.loss(*train_batch, self.edge_weights(), params={**dict(zip(names, params)), **buffers})
        g_w = torch.autograd.grad(loss, params, create_graph=True)  # this rank's: its products are averaged
        u = average(torch.autograd.grad(sum((g * x).sum() for g, x in zip(g_w, v)), params, retain_graph=True))
        return average(torch.autograd.grad(sum((g * x.detach()).sum() for g, x in zip(g_w, u)), self.arch_parameters()))


def _norm(tensors):
    """‖concat(tensors)‖₂ as the norm of the per-tensor norms (one multi-tensor op)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))
