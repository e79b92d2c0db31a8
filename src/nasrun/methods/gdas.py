"""GDAS (Dong & Yang, CVPR 2019: searching for a robust neural architecture in four GPU hours; methods.md §4.10;
reference AutoDL ``exps/algos/GDAS.py`` and ``search_model_gdas.py``).

Every forward samples one op per edge by the Gumbel-max trick, g = −log(Exp(1)),
probs = softmax((log_softmax(α) + g)/τ), k = argmax probs, and runs only op k; the straight-through weights
hard = onehot(k) − probs.detach() + probs make the edge output hard_k·op_k(x) + Σ_{o≠k} hard_o, so α gets
the gradient of the relaxed sample. τ falls linearly from ``tau_max`` to ``tau_min`` over the epochs. The
genotype is argmax α. A draw with an infinite Gumbel or a NaN probability is redrawn, as the reference does.
"""

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..spaces.ops import HardPath
from .darts import Darts


class Gdas(Darts):
    """GDAS on the DARTS-V1 loop (w step, then α step, both on sampled paths).

    Args:
        tau_max, tau_min: the Gumbel temperature of the first and of the last epoch (10 → 0.1).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    distributed = True  # DARTS's steps; the Gumbel draws come from the CPU generator, the same on every rank
    graph_safe = False  # the sampled op of every edge is read on the host to run only that op
    tensor_weights = False  # its mixing weights are sampled paths (HardPath), not tensors a selector can edit

    def __init__(self, supernet, space, name="gdas", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=True,
                 w_weight_decay=5e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 arch_first=False, train_arch=True, lr_offset=0, tau_max=10.0, tau_min=0.1, grad_clip_scope="weights"):
        if not getattr(space, "supports_hard_paths", False):
            raise UserError(f"method=gdas needs cells that can run one sampled op per edge; space {space.name} has "
                            "none (use nb201 or a DARTS-family space)")
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset,
                         grad_clip_scope=grad_clip_scope)
        self.tau_max, self.tau_min, self.tau = tau_max, tau_min, tau_max

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        self.tau = self.tau_max - (self.tau_max - self.tau_min) * epoch / max(epochs - 1, 1)

    def sample(self, alpha):
        """One straight-through Gumbel sample of ``alpha`` [E, K]: ``HardPath(hard, index)``."""
        while True:
            gumbel = -torch.empty(alpha.shape, dtype=alpha.dtype).exponential_().log().to(alpha.device)
            probs = F.softmax((F.log_softmax(alpha, dim=-1) + gumbel) / self.tau, dim=-1)
            if torch.isfinite(gumbel).all() and torch.isfinite(probs).all():
                break
        index = probs.argmax(-1)
        hard = F.one_hot(index, alpha.shape[-1]).to(probs.dtype) - probs.detach() + probs
        return HardPath(hard, index.tolist())

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        return {k: self.sample(a) for k, a in alphas.items()}

    def derive_weights(self):
        return {k: F.softmax(a.detach(), dim=-1) for k, a in self.alphas.items()}

    def hessian_weights(self):
        return {k: F.softmax(a, dim=-1) for k, a in self.alphas.items()}

    def epoch_metrics(self):
        return {"tau": self.tau}
