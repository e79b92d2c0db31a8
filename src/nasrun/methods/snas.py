"""SNAS (Xie et al., ICLR 2019: stochastic neural architecture search; reference SNAS-Series/SNAS
``train_search.py`` / ``model_search.py``), with its resource constraint off by default.

Single level: each step draws one relaxed one-hot sample per edge, w = softmax((log α + g)/τ) with Gumbel
noise g, and one backward pass of the training loss updates both the weights and α (the gradient reaches α
through the relaxed sample). There is no validation split: the search trains on the whole training set
(``merge_train_val``). τ falls linearly from ``temp`` to ``temp_min`` over the reference's 150 epochs,
(1 − e'/150)(τ₀ − τ_min) + τ_min with e' = e + ``temp_offset`` (the reference steps its temperature scheduler,
like its lr scheduler, before each epoch: epoch e runs at τ(e+1)). The α gradient is clipped to norm 10 as the
reference does. α starts at N(0, ``alpha_init_std``²) (the reference's N(1, 0.01²); softmax and the Concrete
density do not see the shift). The reference's single-GPU script steps α with plain SGD (``arch_optimizer=sgd``,
no momentum or decay); its distributed branch with Adam (``adam``).

Resource constraint (``resource``; the reference's ``--resource_efficient --loss``): λ·(P_normal/n_normal +
ratio·P_reduce/n_reduce) joins the step's loss, P summing a per-edge cost over every cell of the type. An op's
cost is its parameter count (size), FLOPs or memory access cost (MAC) by the reference's formulas
(``operations.py``, from the op's channels, kernel and output size), or ``all``: 0.43·(2·size + FLOPs/4000 +
MAC/100); with ``resource_log`` the edge term is log of it (values below 1 count as 1; ``all``: the mean of the
three logs). The edge cost R_e = Σ_o cost_o·w_o is taken three ways: ``reparametrization`` (w the relaxed sample,
so the gradient flows through it), ``discrete`` (w = softmax(α), the expectation under the categorical) and
``policy_gradient`` (R_e held constant and multiplied by the Concrete log-density log p(w | α, τ)).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import average_grads
from ..errors import UserError
from ..graphs import copy_from_host
from ..spaces.ops import DilConv, FactorizedReduce, Identity, Noise, Pooling, ReLUConvBN, SepConv, Zero
from .darts import Darts

ESTIMATORS = ("reparametrization", "discrete", "policy_gradient")
SEPARATIONS = ("all", "size", "flops", "mac")
# the reference's λ when none is given: (estimator, log penalty) → λ (train_search.py)
DEFAULT_LAMBDA = {("policy_gradient", True): 1e-4, ("policy_gradient", False): 1e-5, ("reparametrization", True): 1e-2,
                  ("reparametrization", False): 1e-5, ("discrete", True): 1e-2, ("discrete", False): 1e-4}


def op_cost(op, h, c):
    """``(size, flops, mac)`` of a candidate op whose input is c×h×h (SNAS ``operations.py``; y: its output side)."""
    if isinstance(op, nn.Sequential) and isinstance(op[0], (nn.AvgPool2d, nn.MaxPool2d)):  # DARTS search pool + BN
        op = op[0]
    if isinstance(op, (Zero, Noise)):
        return 0, 0, 0
    if isinstance(op, Identity):
        return 0, 0, 2 * c * h * h
    if isinstance(op, (Pooling, nn.AvgPool2d, nn.MaxPool2d)):
        pool = op.op if isinstance(op, Pooling) else op
        stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        y = h // stride
        return 0, 9 * y * y * c, (2 if stride == 1 else 5) * y * y * c
    if isinstance(op, FactorizedReduce):
        C_in, half = op.conv_1.in_channels, op.conv_1.out_channels
        y = h // 2
        size = 2 * C_in * half
        return size, size * y * y, 2 * y * y * (4 * C_in + half) + size
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    first, last = convs[0], convs[-1]
    C_in, C_out, k, stride = first.in_channels, last.out_channels, first.kernel_size[0], first.stride[0]
    y = h // stride
    if isinstance(op, ReLUConvBN):
        size = C_in * C_out * k * k
        mac = y * y * ((C_in + C_out) if stride == 1 else (4 * C_in + C_out)) + size
    elif isinstance(op, DilConv):
        size = C_in * k * k + C_out * C_in
        mac = y * y * ((3 if stride == 1 else 6) * C_in + C_out) + size
    elif isinstance(op, SepConv):
        size = 2 * C_in * k * k + (C_in + C_out) * C_in
        mac = y * y * ((7 if stride == 1 else 10) * C_in + C_out) + size
    else:
        raise UserError(f"method.resource: no cost model for op {type(op).__name__}")
    return size, size * y * y, mac


def combine(size, flops, mac, separation, log):
    """The per-edge penalty of costs R (``[..., E]`` each): ``all`` weighs the three, or one of them; ``log``: log R with
    |R| < 1 counted as 1 (the reference's ``clean_*``)."""
    def clean_log(r):
        return torch.log(torch.where(r.abs() < 1, torch.ones_like(r), r).abs())

    if separation == "all":
        if log:
            return (clean_log(size) + clean_log(flops) + clean_log(mac)) / 3
        return (size * 2 + flops / 4000 + mac / 100) * 0.43
    r = {"size": size, "flops": flops, "mac": mac}[separation]
    return clean_log(r) if log else r


def concrete_log_prob(log_alpha, w, temp):
    """SNAS ``logp``: log-density of the Concrete (relaxed one-hot) distribution at w, per edge,
    log((n−1)!) + (n−1)·log τ + Σ log α − (τ+1)·Σ log w − n·log Σ α·w^(−τ), with w and α·w^(−τ) floored at 1e-4."""
    n = log_alpha.shape[-1]
    w = w.clamp_min(1e-4)
    last = (w ** (-temp) * log_alpha.exp()).clamp_min(1e-4)
    return (math.lgamma(n) + (n - 1) * torch.log(temp) + log_alpha.sum(-1) - (temp + 1) * w.log().sum(-1)
            - n * last.sum(-1).log())


class Snas(Darts):
    """SNAS; the resource constraint is off unless ``resource`` names an estimator.

    Args:
        temp, temp_min: the temperature of epoch 0 and its floor (1 → 0.03).
        temp_epochs: epochs of the linear decay (the reference hard-codes 150).
        merge_train_val: train on search-train ∪ search-valid (the reference uses the whole training set).
        resource: null (off), ``reparametrization``, ``discrete`` or ``policy_gradient`` (the reference's ``--method``).
        resource_separation: ``all``, ``size``, ``flops`` or ``mac``.
        resource_log: penalise log R (``--log_penalty``).
        resource_lambda: λ; null: the reference's default for the estimator and ``resource_log``.
        resource_ratio: weight of the reduction cells' term (``--ratio``).
        resource_minus_baseline: policy gradient only: R minus the cell's mean op cost (``--minus_baseline``).
        temp_offset: epoch e runs at τ(e + temp_offset) (the reference: 1).
        alpha_init_std: standard deviation of α's initial draw (the reference's ``--loc_std`` 0.01).
        arch_optimizer: ``adam`` (``arch_lr``, ``arch_betas``, ``arch_weight_decay``; the reference's distributed
            branch) or ``sgd`` (``arch_lr`` and ``arch_weight_decay`` only; its single-GPU branch, decay 0).
        Other arguments: as :class:`~nasrun.methods.darts.Darts` (``arch_first`` does not apply: one joint step).
    """

    distributed = True  # several processes: gradients averaged; the Gumbel noise from the CPU generator, the same on every rank

    def __init__(self, supernet, space, name="snas", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=False,
                 w_weight_decay=3e-4, grad_clip=5.0, arch_lr=3e-4, arch_betas=(0.5, 0.999), arch_weight_decay=1e-3,
                 train_arch=True, lr_offset=1, temp=1.0, temp_min=0.03, temp_epochs=150, merge_train_val=True,
                 resource=None, resource_separation="all", resource_log=False, resource_lambda=None, resource_ratio=1.0,
                 resource_minus_baseline=False, temp_offset=1, alpha_init_std=0.01, arch_optimizer="adam"):
        if arch_optimizer not in ("adam", "sgd"):
            raise UserError(f"method.arch_optimizer={arch_optimizer!r}: choose adam or sgd")
        self.alpha_init_std, self.temp_offset = alpha_init_std, temp_offset
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         arch_lr, arch_betas, arch_weight_decay, False, False, 0.01, train_arch, lr_offset)
        if arch_optimizer == "sgd":
            self.arch_opt = torch.optim.SGD(self.arch_parameters(), lr=arch_lr, weight_decay=arch_weight_decay)
        self.temp0, self.temp_min, self.temp_epochs, self.merge_train_val = temp, temp_min, temp_epochs, merge_train_val
        device = next(supernet.parameters()).device
        self._temp = torch.tensor(temp, device=device)  # filled in place each epoch: a captured step reads it
        self._gumbel = {k: torch.zeros_like(a) for k, a in self.alphas.items()}
        self.temp = temp
        if resource is not None and resource not in ESTIMATORS:
            raise UserError(f"method.resource={resource!r}: choose null (off), {', '.join(ESTIMATORS)}")
        if resource_separation not in SEPARATIONS:
            raise UserError(f"method.resource_separation={resource_separation!r}: choose {', '.join(SEPARATIONS)}")
        if resource and not hasattr(supernet, "search_cells"):
            raise UserError(f"method.resource: space {space.name} has no per-op cost model; use nb201 or a DARTS-family "
                            "space")
        self.resource, self.resource_separation, self.resource_log = resource, resource_separation, resource_log
        self.resource_lambda = (DEFAULT_LAMBDA[resource, bool(resource_log)] if resource and resource_lambda is None
                                else resource_lambda)
        self.resource_ratio, self.resource_minus_baseline = resource_ratio, resource_minus_baseline
        self.costs = None  # {key: (size, flops, mac) [cells, E, K]}, measured at the first step
        self._penalty_sum = torch.zeros((), device=device, dtype=torch.float64)
        self._penalty_steps = 0

    def init_alphas(self, scale=None):
        super().init_alphas(self.alpha_init_std)

    def graph_tensors(self):
        return [*super().graph_tensors(), self._temp, *self._gumbel.values(), self._penalty_sum]

    def on_epoch_start(self, epoch, epochs):
        super().on_epoch_start(epoch, epochs)
        e = epoch + self.temp_offset
        self.temp = max((1 - e / self.temp_epochs) * (self.temp0 - self.temp_min) + self.temp_min, self.temp_min)
        self._temp.fill_(self.temp)
        self._penalty_sum.zero_()
        self._penalty_steps = 0

    def prepare_step(self):
        """The step's Gumbel noise −log(−log u), drawn on the CPU generator."""
        for buf in self._gumbel.values():
            u = torch.rand(buf.shape, dtype=buf.dtype).clamp_min(torch.finfo(buf.dtype).tiny)
            copy_from_host(buf, -(-u.log()).log())

    def edge_weights(self, alphas=None):
        alphas = self.alphas if alphas is None else alphas
        return {k: F.softmax((a + self._gumbel[k]) / self._temp, dim=-1) for k, a in alphas.items()}

    def hessian_weights(self):
        return {k: F.softmax(a, dim=-1) for k, a in self.alphas.items()}

    def step(self, train_batch, valid_batch):
        if self.resource:
            if self.costs is None:
                self.costs = self.measure_costs(train_batch[0][:1])
            self._penalty_steps += 1
        return super().step(train_batch, valid_batch)

    def measure_costs(self, x):
        """Every candidate op's ``(size, flops, mac)`` per search cell, from the input sizes one forward of a copy
        of the supernet sees (eval mode, RNG untouched): ``{α key: three [cells, E, K] tensors}``."""
        import copy

        from ..spaces.fused import set_fused

        net, sides = set_fused(copy.deepcopy(self.supernet).eval(), False), {}  # the per-op forward calls every op
        cells = net.search_cells()
        for i, cell, _ in cells:
            for e, ops in enumerate(cell.ops):
                for o, op in enumerate(ops):
                    op.register_forward_pre_hook(lambda m, a, key=(i, e, o): sides.__setitem__(key, a[0].shape[1:]))
            cell.set_active(None)
        with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            net(x, {k: torch.full_like(a, 1.0 / a.shape[-1]) for k, a in self.alphas.items()})
        costs = {}
        self.reduce_keys = {key for _, cell, key in cells if getattr(cell, "reduction", False)}
        for i, cell, key in cells:
            table = [[op_cost(op, sides[i, e, o][-1], sides[i, e, o][0]) for o, op in enumerate(ops)]
                     for e, ops in enumerate(cell.ops)]
            costs.setdefault(key, []).append(torch.tensor(table, dtype=torch.float32).permute(2, 0, 1))
        device = next(iter(self.alphas.values())).device
        return {k: torch.stack(v, 1).to(device) for k, v in costs.items()}  # [3, cells, E, K]

    def resource_penalty(self, weights):
        """λ·(P_normal/n + ratio·P_reduce/n) for mixing weights ``{key: [E, K]}`` (the relaxed sample)."""
        total = 0.0
        for key, cost in self.costs.items():
            alpha = self.alphas[key]
            w = F.softmax(alpha, -1) if self.resource == "discrete" else weights[key]
            if self.resource == "policy_gradient":
                r = (cost * w.detach()).sum(-1)  # [3, cells, E]
                if self.resource_minus_baseline:
                    base = cost.mean((-2, -1), keepdim=True)[..., 0]  # the cell's mean op cost
                    pen = (combine(*(r - base), self.resource_separation, False) if not self.resource_log else
                           combine(*r, self.resource_separation, True) - combine(*base, self.resource_separation, True))
                else:
                    pen = combine(*r, self.resource_separation, self.resource_log)
                pen = concrete_log_prob(alpha, w, self._temp) * pen.detach()
            else:
                pen = combine(*(cost * w).sum(-1), self.resource_separation, self.resource_log)
            mean = pen.sum() / pen.shape[0]  # per cell of the type
            total = total + (self.resource_ratio * mean if key in self.reduce_keys else mean)
        return self.resource_lambda * total

    def device_step(self, train_batch, valid_batch):
        """One joint step: the training loss at the relaxed sample (+ the resource penalty), backward to w and α,
        both optimisers step."""
        x, y = train_batch
        self.w_opt.zero_grad(set_to_none=True)
        self.arch_opt.zero_grad(set_to_none=True)
        weights = self.edge_weights()
        loss, logits = self.loss(x, y, weights)
        if self.resource:
            penalty = self.resource_penalty(weights)
            self._penalty_sum += penalty.detach().double()
            (loss + penalty).backward()
        else:
            loss.backward()
        average_grads([*self.supernet.parameters(), *self.arch_parameters()])
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.supernet.parameters(), self.grad_clip)
        self.w_opt.step()
        if self.train_arch:
            torch.nn.utils.clip_grad_norm_(self.arch_parameters(), 10.0)
            self.arch_opt.step()
        return {"train_loss": loss.detach(), "train_correct": (logits.argmax(1) == y).sum()}

    def state_dict(self):
        return {**super().state_dict(), "penalty": (self._penalty_sum.clone(), self._penalty_steps)}

    def load_state_dict(self, state):
        if "penalty" in state:
            self._penalty_sum.copy_(state["penalty"][0])
            self._penalty_steps = state["penalty"][1]
        super().load_state_dict(state)

    def epoch_metrics(self):
        out = {"tau": self.temp}
        if self.resource:
            out["resource_penalty"] = self._penalty_sum.item() / self._penalty_steps if self._penalty_steps else None
        return out
