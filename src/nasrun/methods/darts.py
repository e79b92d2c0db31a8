"""DARTS, first and second order (Liu et al., ICLR 2019; methods.md §4.1-4.2)."""

import math

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet

from ..distributed import average, average_grads
from ..errors import UserError
from .base import Method, cosine_lr


CLIP_SCOPES = ("weights", "alpha", "alpha_stale")


class Darts(Method):
    """DARTS with softmax relaxation; ``unrolled=True`` is DARTS-V2 (second order).

    Args:
        supernet: the space's weight-sharing network.
        space: the search space (α shapes).
        name: method name for logs.
        w_lr, w_lr_min: weight SGD learning rate, cosine-annealed per epoch to ``w_lr_min``
            (``w_lr_min == w_lr`` gives a constant rate).
        w_momentum, w_nesterov, w_weight_decay: weight SGD settings.
        grad_clip: max gradient norm of the weights before each w step (``null`` disables).
        grad_clip_scope: which gradients that norm covers: ``weights`` (quark0 and most references); ``alpha``:
            also α's gradient of the w step's train loss (DrNAS's NB201 code: α is a parameter of the model it clips,
            its gradient zeroed before the w step); ``alpha_stale``: that plus the gradient the last α step left in
            α.grad (AutoDL's DARTS-V1/V2 and GDAS, and their copies: only the weight optimiser is zeroed). α is not
            changed by it; only the clipping factor of the weight step is.
        arch_lr, arch_betas, arch_weight_decay: α Adam settings.
        arch_first: α step before the w step of the same iteration (quark0, DARTS-V2) or after it
            (AutoDL NB201 DARTS-V1), methods.md §0.1.
        unrolled: second-order α gradient through a virtual SGD step (finite-difference Hessian term).
        fd_radius: r of the central difference, ε = r/‖v‖ (0.01 in quark0/AutoDL).
        train_arch: set False to keep α fixed at its initial value.
        lr_offset: epoch e runs at lr(e + lr_offset); quark0 steps its scheduler at the start of each epoch
            (1: epoch e at lr(e+1), also the ξ of its unrolled step); AutoDL, RobustDARTS, darts-pt: 0.
        relaxation: ``softmax`` (DARTS) or ``dirichlet`` (DrNAS's: every forward mixes with a reparameterised
            sample of Dir(ELU(α)+1)), so a gradient rule composes with either (TSE-DrNAS: ``method=tse_darts
            method.relaxation=dirichlet``).
        arch_start_epoch: epochs of weights-only training before the α steps begin (P-DARTS 10, PC-DARTS 15).
        arch_grad_clip: max norm of the α gradient before its Adam step (P-DARTS 5; null: none).
        lr_epochs: length of the cosine schedule (null: the run's epochs; GAEA anneals over 50 epochs and runs 25).
        stage_epochs, stage_partial_channels, stage_keep: DrNAS's progressive search (one entry per stage; null:
            one stage). Before each later stage every edge keeps its ``stage_keep`` ops of largest α (the others
            are masked out of the mixing weights, renormalised, and no longer computed) and the supernet is
            widened to ``stage_partial_channels`` (:mod:`nasrun.spaces.progressive`); the SGD momentum is
            widened with it; α steps start ``arch_start_epoch`` epochs into every stage.
        stage_lr_restart: False: the cosine schedule runs on across the stages; True: as the DrNAS reference
            under PyTorch ≥ 1.4, whose re-created SGD restarts the recursive cosine from ``w_lr``, so a stage
            starting at s runs at η_min + (η0 − η_min)(1 + cos πe/T)/(1 + cos πs/T).
    """

    distributed = True  # its steps average every gradient over the ranks (torch.distributed; nasrun.distributed)

    def __init__(self, supernet, space, name="darts", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9,
                 w_nesterov=True, w_weight_decay=5e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999),
                 arch_weight_decay=1e-3, arch_first=False, unrolled=False, fd_radius=0.01, train_arch=True,
                 lr_offset=0, relaxation="softmax", arch_start_epoch=0, arch_grad_clip=None, lr_epochs=None,
                 stage_epochs=None, stage_partial_channels=None, stage_keep=None, stage_lr_restart=False,
                 grad_clip_scope="weights"):
        super().__init__(supernet, space)
        if grad_clip_scope not in CLIP_SCOPES:
            raise UserError(f"method.grad_clip_scope={grad_clip_scope!r}: choose {', '.join(CLIP_SCOPES)}")
        self.grad_clip_scope = grad_clip_scope
        self.arch_enabled, self.arch_start_epoch, self.arch_grad_clip = train_arch, arch_start_epoch, arch_grad_clip
        if relaxation not in ("softmax", "dirichlet"):
            raise UserError(f"method.relaxation={relaxation!r}: choose softmax or dirichlet")
        self.lr_offset, self.relaxation, self.lr_epochs = lr_offset, relaxation, lr_epochs
        self.name = name
        self.w_lr, self.w_lr_min, self.grad_clip = w_lr, w_lr_min, grad_clip
        self.arch_first, self.unrolled, self.train_arch = arch_first, unrolled, train_arch
        self.fd_radius = fd_radius
        self.init_alphas()
        self.w_opt = torch.optim.SGD(supernet.parameters(), lr=w_lr, momentum=w_momentum,
                                     nesterov=w_nesterov and w_momentum > 0, weight_decay=w_weight_decay)
        self.arch_opt = torch.optim.Adam(self.arch_parameters(), lr=arch_lr, betas=tuple(arch_betas),
                                         weight_decay=arch_weight_decay)
        self.stages = self._check_stages(stage_epochs, stage_partial_channels, stage_keep)
        self.stage_total = sum(stage_epochs or [])
        self.stage, self.op_mask, self.stage_lr_restart = 0, None, stage_lr_restart
        # AutoDL's α.grad between its α step and the next w step (zero before the first α step)
        self._stale = [torch.zeros_like(a) for a in self.arch_parameters()] if grad_clip_scope == "alpha_stale" else None

    def _check_stages(self, epochs, partial, keep):
        """``[(first epoch, partial channels, ops kept)]`` of the progressive stages ([] without them)."""
        if not epochs:
            return []
        n = len(epochs)
        partial, keep = list(partial or [1] * n), list(keep or [None] * n)
        if len(partial) != n or len(keep) != n:
            raise UserError(f"method.stage_epochs, stage_partial_channels and stage_keep need one entry per stage "
                            f"({n}, {len(partial)} and {len(keep)} given)")
        if not hasattr(self.supernet, "set_partial"):
            raise UserError(f"method.stage_epochs: progressive search prunes and widens edge ops, which space "
                            f"{self.space.name} does not have; use nb201 or a DARTS-family space")
        ops = {shape[1] for shape in self.space.alpha_shapes().values()}.pop()
        keep = [ops if k is None else k for k in keep]
        if int(self.supernet.partial_channels) != partial[0]:
            raise UserError(f"method.stage_partial_channels starts at {partial[0]} but space.partial_channels="
                            f"{int(self.supernet.partial_channels)}; set space.partial_channels={partial[0]}")
        if keep[0] != ops or any(not 1 <= b <= a for a, b in zip(keep, keep[1:])):
            raise UserError(f"method.stage_keep={keep}: the first stage searches all {ops} ops and every later stage "
                            "keeps at least one and no more than the stage before")
        widths = {cell.init_args["C"] for _, cell, _ in self.supernet.search_cells()}
        bad = [k for k in partial if k < 1 or any(c % k for c in widths)]
        if bad or any(e < 1 for e in epochs):
            raise UserError(f"method.stage_epochs={list(epochs)}, stage_partial_channels={partial}: epochs must be ≥ 1 "
                            f"and every K must divide the cell widths {sorted(widths)}")
        starts = [sum(epochs[:i]) for i in range(n)]
        return list(zip(starts, partial, keep))

    def check_epochs(self, epochs):
        """The stages must cover the run (``trainer.epochs``)."""
        if self.stages and self.stage_total != epochs:
            raise UserError(f"method.stage_epochs sum to {self.stage_total} but trainer.epochs={epochs}; make them equal")

    def enter_stage(self, index):
        """DrNAS's stage change: keep each edge's ``keep`` ops of largest α and set the others' α to 0 (``prune``:
        their concentration ELU(0) + 1 = 1 still enters each row's Dirichlet draw before the mask), widen the partial channels
        (``model.wider``) carrying the SGD momentum along (``configure_optimizer``)."""
        start, partial, keep = self.stages[index]
        masks = {}
        with torch.no_grad():
            for k, a in self.alphas.items():
                scores = a.detach().clone()
                if self.op_mask is not None:
                    scores[~self.op_mask[k]] = -math.inf
                masks[k] = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, -1).indices, True)
                a.masked_fill_(~masks[k], 0.0)  # the reference's prune() rewrites α with the kept entries alone
        self.op_mask = masks
        if partial != int(self.supernet.partial_channels):
            remap = self.supernet.set_partial(partial)
            opt = self.w_opt
            moved = {}
            for p, state in opt.state.items():
                new, resize = remap.get(p, (p, None))
                moved[new] = {k: resize(v) if resize and torch.is_tensor(v) and v.shape == p.shape else v
                              for k, v in state.items()}
            opt.state.clear()
            opt.state.update(moved)
            for g in opt.param_groups:
                g["params"] = [remap.get(p, (p,))[0] for p in g["params"]]
        self.supernet.set_active_ops(masks)
        self.stage = index
        self.reset_graphs()
        from ..console import console

        console.print(f"{self.name}: stage {index + 1}/{len(self.stages)} from epoch {start + 1}: {keep} ops per edge, "
                      f"partial channels K={partial}")

    def pruned(self, weights):
        """Mixing weights with the pruned ops zeroed and every row renormalised (DrNAS ``process_step_vector``)."""
        if self.op_mask is None:
            return weights
        return {k: w * self.op_mask[k] / (w * self.op_mask[k]).sum(-1, keepdim=True) for k, w in weights.items()}

    @property
    def learns_alpha(self):
        """Whether α is ever trained (False: fixed_alpha, RSPS); selectors that read α warn otherwise."""
        return self.arch_enabled

    def optimizers(self):
        return [self.w_opt, self.arch_opt]

    def graph_key(self):
        return (super().graph_key(), self.train_arch)  # a captured step does (or skips) the α step

    def graph_tensors(self):
        return [*super().graph_tensors(), *(self._stale or [])]

    @staticmethod
    def concentration(alpha):
        """DrNAS's Dirichlet concentration β = ELU(α) + 1 (positive, and 1 at α = 0)."""
        return F.elu(alpha) + 1

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        if self.relaxation == "dirichlet":
            # drawn on the device from its default generator (graph-safe); no argument validation: it reads the host
            return self.pruned({k: Dirichlet(self.concentration(a), validate_args=False).rsample()
                                for k, a in alphas.items()})
        return self.pruned({k: F.softmax(a, dim=-1) for k, a in alphas.items()})

    def hessian_weights(self):
        if self.relaxation == "dirichlet":  # the Dirichlet mean β/Σβ: the sampler has no second derivative
            return self.pruned({k: self.concentration(a) / self.concentration(a).sum(-1, keepdim=True)
                                for k, a in self.alphas.items()})
        return self.edge_weights()

    def derive_weights(self):
        return self.pruned({k: F.softmax(a.detach(), dim=-1) for k, a in self.alphas.items()})

    def on_epoch_start(self, epoch, epochs):
        start = 0
        if self.stages:
            index = max(i for i, s in enumerate(self.stages) if s[0] <= epoch)
            while self.stage < index:
                self.enter_stage(self.stage + 1)
            start = self.stages[self.stage][0]
        T = self.lr_epochs or epochs
        lr = cosine_lr(epoch + self.lr_offset, T, self.w_lr, self.w_lr_min)
        if self.stage_lr_restart and start:
            lr = self.w_lr_min + (self.w_lr - self.w_lr_min) * ((1 + math.cos(math.pi * (epoch + self.lr_offset) / T))
                                                                 / (1 + math.cos(math.pi * (start + self.lr_offset) / T)))
        for g in self.w_opt.param_groups:
            g["lr"] = lr
        self.train_arch = self.arch_enabled and epoch - start >= self.arch_start_epoch

    def lrs(self):
        return {"w_lr": self.w_opt.param_groups[0]["lr"], "arch_lr": self.arch_opt.param_groups[0]["lr"],
                "w_weight_decay": self.weight_decay}

    @property
    def weight_decay(self):
        """The weight optimiser's decay (DARTS-ADA raises it; it is part of the optimiser's saved state)."""
        return self.w_opt.param_groups[0]["weight_decay"]

    @weight_decay.setter
    def weight_decay(self, value):
        for g in self.w_opt.param_groups:
            g["weight_decay"] = value

    def device_step(self, train_batch, valid_batch):
        out = {}
        if self.arch_first and self.train_arch:
            out.update(self.arch_step(train_batch, valid_batch))
        out.update(self.weight_step(train_batch))
        if not self.arch_first and self.train_arch:
            out.update(self.arch_step(train_batch, valid_batch))
        return out

    def weight_step(self, batch):
        """Ordinary SGD step on the train batch with α held fixed (clipped as ``grad_clip_scope`` says)."""
        x, y = batch
        with_alpha = bool(self.grad_clip) and self.grad_clip_scope != "weights"
        weights = {k: v if with_alpha else v.detach() for k, v in self.weight_step_weights().items()}
        self.w_opt.zero_grad(set_to_none=True)
        loss, logits = self.loss(x, y, weights)
        loss.backward()  # with_alpha: α.grad gets the train loss's gradient too, as in the references
        average_grads([*self.supernet.parameters(), *(self.arch_parameters() if with_alpha else [])])
        if with_alpha:
            alphas = self.arch_parameters()
            if self._stale is not None:
                for a, g in zip(alphas, self._stale):
                    a.grad = g.clone() if a.grad is None else a.grad + g
            torch.nn.utils.clip_grad_norm_([*self.supernet.parameters(), *alphas], self.grad_clip)
            for a in alphas:
                a.grad = None  # α moves only in its own step
        elif self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.w_opt.step()
        return {"train_loss": loss.detach(), "train_correct": (logits.argmax(1) == y).sum()}

    def weight_step_weights(self):
        """The mixing weights of the w step (softmax(α) unless a method says otherwise), as functions of α: the w step
        detaches them unless its clipping reads α's gradient (``grad_clip_scope``)."""
        return self.edge_weights()

    def arch_step(self, train_batch, valid_batch):
        """Adam step on α with the first-order or unrolled hypergradient."""
        grads, loss, logits = self.arch_grad(train_batch, valid_batch)
        for a, g in zip(self.arch_parameters(), grads):
            a.grad = g
        if self.arch_grad_clip:
            torch.nn.utils.clip_grad_norm_(self.arch_parameters(), self.arch_grad_clip)
        if self._stale is not None:
            torch._foreach_copy_(self._stale, [a.grad for a in self.arch_parameters()])
        self.arch_opt.step()
        self.arch_opt.zero_grad(set_to_none=True)
        return {"valid_loss": loss.detach(), "valid_correct": (logits.argmax(1) == valid_batch[1]).sum()}

    def arch_grad(self, train_batch, valid_batch):
        """The α gradient rule: ``(grads, valid_loss, valid_logits)``; subclasses replace it."""
        if self.unrolled:
            return self.unrolled_grad(train_batch, valid_batch)
        return self.first_order_grad(valid_batch)

    def functional_state(self):
        """``(names, params, buffers)`` for evaluating the supernet at other weights; the state buffers
        (BN statistics) are copies, so a virtual pass keeps its own."""
        names, params = zip(*self.supernet.named_parameters())
        return names, params, self.functional_buffers()

    def functional_buffers(self):
        """The supernet's buffers, the persistent ones (BN statistics) cloned, the constant index tables as is."""
        persistent = self.supernet.state_dict(keep_vars=True).keys()
        return {n: b.clone() if n in persistent else b for n, b in self.supernet.named_buffers()}

    def first_order_grad(self, valid_batch):
        """∇_α L_val(w, α) (no weight gradients are accumulated)."""
        x, y = valid_batch
        loss, logits = self.loss(x, y, self.edge_weights())
        return average(list(torch.autograd.grad(loss, self.arch_parameters()))), loss, logits

    def unrolled_grad(self, train_batch, valid_batch):
        """DARTS-V2 hypergradient d_α − ξ·[∇_α L_tr(w⁺) − ∇_α L_tr(w⁻)]/(2ε) (methods.md §4.2)."""
        alphas = self.arch_parameters()
        names, params = zip(*self.supernet.named_parameters())
        buffers = self.functional_buffers()  # the virtual net keeps its own BN stats
        group = self.w_opt.param_groups[0]
        xi, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        # Virtual step w' = w − ξ(μ·m + ∇_w L_tr + λ·w), α held fixed (one multi-tensor op per term).
        fixed = {k: v.detach() for k, v in self.edge_weights().items()}
        loss_tr, _ = self.loss(*train_batch, fixed, params={**dict(zip(names, params)), **buffers})
        g_w = average(list(torch.autograd.grad(loss_tr, params, materialize_grads=True)))  # 0 for ops a stage pruned
        with torch.no_grad():
            step = torch._foreach_add(list(g_w), list(params), alpha=wd) if wd else list(g_w)
            bufs = [self.w_opt.state.get(p, {}).get("momentum_buffer") for p in params]
            if mu and all(b is not None for b in bufs):
                step = torch._foreach_add(torch._foreach_mul(bufs, mu), step)
            elif mu and any(b is not None for b in bufs):
                step = [s if b is None else mu * b + s for b, s in zip(bufs, step)]
            virtual = torch._foreach_sub(list(params), torch._foreach_mul(step, xi))
        w_virtual = {n: w.requires_grad_() for n, w in zip(names, virtual)}
        loss_val, logits = self.loss(*valid_batch, self.edge_weights(), params={**w_virtual, **buffers})
        grads = average(list(torch.autograd.grad(loss_val, list(alphas) + [w_virtual[n] for n in names],
                                                 materialize_grads=True)))
        d_alpha, v = grads[: len(alphas)], list(grads[len(alphas):])
        # ε = r/‖v‖ (r = 0.01 in the references): central differences of ∇_α L_tr at w ± ε·v approximate ∇²_{α,w} L_tr · v.
        eps = self.fd_radius / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))
        with torch.no_grad():
            ev = torch._foreach_mul(v, eps)
            w_plus = dict(zip(names, torch._foreach_add(list(params), ev)))
            w_minus = dict(zip(names, torch._foreach_sub(list(params), ev)))
        g_plus = average(list(torch.autograd.grad(self.loss(*train_batch, self.edge_weights(),
                                                            params={**w_plus, **buffers})[0], alphas)))
        g_minus = average(list(torch.autograd.grad(self.loss(*train_batch, self.edge_weights(),
                                                             params={**w_minus, **buffers})[0], alphas)))
        hyper = [d - xi * (gp - gm) / (2 * eps) for d, gp, gm in zip(d_alpha, g_plus, g_minus)]
        return hyper, loss_val, logits

    def state_dict(self):
        stages = {"stage": self.stage, "op_mask": self.op_mask and {k: m.cpu() for k, m in self.op_mask.items()}}
        stale = {"stale_alpha_grad": [g.detach().clone() for g in self._stale]} if self._stale is not None else {}
        return {**super().state_dict(), "w_opt": self.w_opt.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                **(stages if self.stages else {}), **stale}

    def load_state_dict(self, state):
        if self.stages:  # the supernet was loaded first, at the checkpoint's width: the SGD follows its parameters
            self.w_opt.param_groups[0]["params"] = list(self.supernet.parameters())
            self.stage = state.get("stage", 0)
            device = next(iter(self.alphas.values())).device
            self.op_mask = state.get("op_mask") and {k: m.to(device) for k, m in state["op_mask"].items()}
            self.supernet.set_active_ops(self.op_mask)
        self.w_opt.load_state_dict(state["w_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        if self._stale is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._stale, [g.to(s.device) for s, g in zip(self._stale, state["stale_alpha_grad"])])
        super().load_state_dict(state)
