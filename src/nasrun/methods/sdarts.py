"""SDARTS (Chen & Hsieh, ICML 2020: stabilizing DARTS with perturbation-based regularization; reference
xiangning-chen/SmoothDARTS ``sota/cnn/train_search.py`` and ``attacker/perturb.py``).

The α step is DARTS's. The w step trains the supernet at a perturbed point of the architecture simplex:
a = clip(softmax(α) + δ) with ‖δ‖∞ ≤ ε, ε growing linearly 0.03 → 0.3 over the epochs. SDARTS-RS draws δ
uniformly; SDARTS-ADV finds δ by a 7-step sign-gradient ascent of the train loss (BN in eval mode, a
random start, projection onto the ε-ball and the simplex after every step) and keeps the start point if
the attack did not raise the loss. ``clip`` is the reference's (``model_search.clip``): clamp to [0, 1], a row
that became all zero gets 1 where the row, before clamping, had its largest value (the *perturbed* row's argmax,
not softmax(α)'s), then each row is renormalised. The presets follow the reference's schedule (its scheduler steps
before each epoch: epoch e runs at lr(e + 1), ``lr_offset: 1``) and, on the DARTS space, its 7 ops (``none`` is
commented out in ``sota/cnn/spaces.py``: ``space: darts_7op``).
"""

import torch
import torch.nn.functional as F

from ..distributed import average
from ..errors import UserError
from ..graphs import copy_from_host
from .darts import Darts


def clip_simplex(w):
    """Clamp rows to [0, 1], put 1 at each all-zero row's argmax before the clamp, renormalise (SmoothDARTS's clip)."""
    top = torch.zeros_like(w).scatter_(-1, w.argmax(-1, keepdim=True), 1.0)  # one-hot without F.one_hot's host check
    w = w.clamp(0, 1)
    dead = w.sum(-1, keepdim=True) == 0
    w = torch.where(dead, top, w)
    return w / w.sum(-1, keepdim=True)


class SDarts(Darts):
    """SDARTS-RS (``perturbation: random``) and SDARTS-ADV (``adversarial``) on first-order DARTS.

    Args:
        perturbation: ``random`` (RS) or ``adversarial`` (ADV).
        epsilon_min, epsilon_max: ε of epoch e is epsilon_min + (epsilon_max − epsilon_min)·e/E.
        attack_steps: PGD steps of SDARTS-ADV (step size 2ε/steps).
        Other arguments: as :class:`~nasrun.methods.darts.Darts`.
    """

    distributed = True  # several processes: δ from the CPU generator; the attack's gradient and losses averaged

    def __init__(self, supernet, space, name="sdarts", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 arch_first=True, train_arch=True, lr_offset=0, perturbation="random", epsilon_min=0.03,
                 epsilon_max=0.3, attack_steps=7):
        if perturbation not in ("random", "adversarial"):
            raise UserError(f"method.perturbation={perturbation!r}: choose random (SDARTS-RS) or adversarial (SDARTS-ADV)")
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, arch_first, False, 0.01, train_arch, lr_offset)
        self.perturbation, self.attack_steps = perturbation, attack_steps
        self.epsilon_min, self.epsilon_max = epsilon_min, epsilon_max
        device = next(supernet.parameters()).device
        self._epsilon = torch.tensor(epsilon_min, device=device)  # filled in place: a captured step reads it
        self._noise = {k: torch.zeros_like(a) for k, a in self.alphas.items()}
        self.epsilon = epsilon_min

    def graph_tensors(self):
        return [*super().graph_tensors(), self._epsilon, *self._noise.values()]

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        self.epsilon = self.epsilon_min + (self.epsilon_max - self.epsilon_min) * epoch / epochs
        self._epsilon.fill_(self.epsilon)

    def prepare_step(self):
        """δ's uniform draw in [−1, 1] (RS: the perturbation; ADV: the random start) from the CPU generator."""
        for buf in self._noise.values():
            copy_from_host(buf, torch.rand(buf.shape, dtype=buf.dtype) * 2 - 1)

    def weight_step(self, batch):
        self._perturbed = self.perturb(batch)  # after this step's α step, as the reference perturbs
        return super().weight_step(batch)

    def weight_step_weights(self):
        return self._perturbed

    def perturb(self, batch):
        """The perturbed mixing weights of this step's w step (detached)."""
        eps = self._epsilon
        with torch.no_grad():
            base = {k: F.softmax(a.detach(), dim=-1) for k, a in self.alphas.items()}
            start = {k: clip_simplex(w + eps * self._noise[k]) for k, w in base.items()}
        if self.perturbation == "random":
            return start
        return self.attack(batch, base, start)

    def attack(self, batch, base, start):
        """SDARTS-ADV: maximise the train loss over ‖δ‖∞ ≤ ε by sign-gradient steps of 2ε/steps."""
        x, y = batch
        was_training = self.supernet.training
        self.supernet.eval()
        eps = self._epsilon
        with torch.no_grad():
            loss_before = self.loss(x, y, base)[0]
        w = {k: v.clone() for k, v in start.items()}
        for _ in range(self.attack_steps):
            leaves = {k: v.requires_grad_() for k, v in w.items()}
            loss = self.loss(x, y, leaves)[0]
            grads = average(torch.autograd.grad(loss, list(leaves.values())))  # the global batch's ascent direction
            with torch.no_grad():
                w = {k: clip_simplex(base[k] + (v + 2 * eps / self.attack_steps * g.sign() - base[k]).clamp(-eps, eps))
                     for (k, v), g in zip(leaves.items(), grads)}
        with torch.no_grad():
            loss_after = self.loss(x, y, w)[0]
            loss_before, loss_after = average([loss_before, loss_after])  # several ranks: the global batch's losses
            keep = loss_after >= loss_before  # the reference reverts to α when the attack lowered the loss
            w = {k: torch.where(keep, v, base[k]) for k, v in w.items()}
        self.supernet.train(was_training)
        return w

    def epoch_metrics(self):
        return {"epsilon": self.epsilon}
