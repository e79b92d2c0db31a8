"""The method seam: owns α and both optimisers, and performs one search step (design.md §4)."""

import abc
import contextlib
import math

import torch
import torch.nn.functional as F
from torch.func import functional_call

from ..graphs import GraphSet, GraphState, optimizer_key, set_capturable
from ..utils import full_precision


def cosine_lr(epoch, epochs, lr_max, lr_min):
    """AutoDL cosine: lr(e) = η_min + (η0 − η_min)(1 + cos(π e / E)) / 2, epoch 0 runs at η0 (methods.md §0.5)."""
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


class NodeSoftmax:
    """Softmax over the α rows that feed the same node (PC-DARTS's edge normalisation, GAEA's edge weights), for a
    space with ``edge_targets``; the index table is made once, on the device, and the softmax is a few whole-vector
    ops (no per-node loop)."""

    def __init__(self, space, device):
        targets = space.edge_targets()
        nodes = sorted(set(targets))
        self.rows_node = torch.tensor([nodes.index(t) for t in targets], device=device)
        self.n_nodes = len(nodes)

    def __call__(self, scores):
        node = self.rows_node
        peak = scores.new_full((self.n_nodes,), -math.inf).scatter_reduce(0, node, scores.detach(), "amax")
        u = torch.exp(scores - peak[node])  # the peak only keeps exp in range: the softmax does not depend on it
        return u / u.new_zeros(self.n_nodes).index_add(0, node, u)[node]


class Method(abc.ABC):
    """Base class of search methods.

    Subclasses create architecture parameters in ``self.alphas`` (``{cell_type: Parameter}``) and
    implement :meth:`step`. The supernet's own parameters are the weights ``w``; α is never part of
    the weight optimiser.
    """

    name = "method"
    op_mask = None  # {cell_type: bool [E, K]}: the ops a progressive search still searches (None: all)

    def __init__(self, supernet, space):
        self.supernet = supernet
        self.space = space
        self.autocast = contextlib.nullcontext  # the search loop swaps in bf16 autocast on CUDA
        self.alphas = {}
        self.graphs = GraphSet(False)

    # --- CUDA graphs (perf.md §3.2) ---------------------------------------------------------------------------
    def optimizers(self):
        """The method's optimisers (their hyper-parameters are baked into a captured step)."""
        return []

    graph_safe = True  # False: the step draws from the device RNG in a way not checked under capture (eager)

    def use_cuda_graphs(self, backend, verify=True):
        """Run :meth:`device_step` (and other capturable units) from captured graphs (``backend``: a
        :class:`~nasrun.graphs.CudaBackend`, the CPU emulation, True for CUDA, or None/False: eager); Adam becomes
        capturable. ``verify``: the self-check at every capture. A method that is not :attr:`graph_safe` stays eager
        and says so once."""
        if backend and not self.graph_safe:
            from ..console import console

            console.print(f"{self.name}: CUDA graphs off (its step samples from the device RNG; it runs eagerly)")
            backend = None
        self.graphs = GraphSet(backend, self.graph_state, verify)
        for opt in self.optimizers():
            set_capturable(opt, self.graphs.enabled)

    def graph_state(self):
        """What a captured step keeps between calls (:class:`~nasrun.graphs.GraphState`): the supernet, the
        optimisers, α and :meth:`graph_tensors`."""
        return GraphState([self.supernet], self.optimizers(), [*self.arch_parameters(), *self.graph_tensors()])

    def graph_tensors(self):
        """Other tensors a captured step writes and a later one reads (device accumulators, schedules)."""
        return []

    def graph_key(self):
        """Python values a captured step bakes in: the optimisers (identity and hyper-parameters) and the
        supernet's (:meth:`graph_key` of the space's supernet: drop rates, active ops)."""
        return optimizer_key(self.optimizers()), self.supernet.graph_key()

    def reset_graphs(self):
        """Drop captured graphs (after state they point to was replaced, e.g. by a checkpoint load)."""
        self.graphs.reset()
        for opt in self.optimizers():
            set_capturable(opt, self.graphs.enabled)

    def step(self, train_batch, valid_batch):
        """One search iteration: host-side choices (:meth:`prepare_step`), then the device work
        (:meth:`device_step`, from a CUDA graph when enabled). Returns detached device tensors."""
        self.prepare_step()
        return self.graphs.run("step", self.device_step, self.graph_key, train_batch, valid_batch)

    def prepare_step(self):
        """Per-step work on the host before the device step (random choices of the CPU generator)."""

    def init_alphas(self, scale=1e-3):
        """α ~ scale·N(0,1) with one row per edge and one column per candidate op."""
        device = next(self.supernet.parameters()).device
        self.alphas = {k: torch.nn.Parameter(scale * torch.randn(*shape, device=device))
                       for k, shape in self.space.alpha_shapes().items()}

    def arch_parameters(self):
        """The architecture parameters, in a fixed order."""
        return [self.alphas[k] for k in sorted(self.alphas)]

    def edge_weights(self, alphas=None):
        """Per-edge mixing weights ``{cell_type: softmax(α)}``; pass ``alphas`` to differentiate w.r.t. them."""
        alphas = self.alphas if alphas is None else alphas
        return {k: F.softmax(a, dim=-1) for k, a in alphas.items()}

    def hessian_weights(self):
        """The (twice differentiable, deterministic) mixing weights the Hessian diagnostic differentiates."""
        return self.edge_weights()

    def derive_weights(self):
        """Weights the selector reads the genotype from (softmax(α) by default)."""
        return {k: v.detach() for k, v in self.edge_weights().items()}

    def loss(self, x, y, weights, params=None, model=None):
        """Cross-entropy and logits of the supernet; ``params`` evaluates it functionally at other weights,
        ``model`` evaluates another module (a copy) instead."""
        bypass = self.bypass_scales()
        args = (x, weights) if bypass is None else (x, weights, bypass)
        with self.autocast():
            if model is not None:
                out = model(*args)
            elif params is None:
                out = self.supernet(*args)
            else:
                out = functional_call(self.supernet, params, args)
        # a supernet with an auxiliary tower returns (logits, logits_aux) in training
        logits, aux = out if isinstance(out, tuple) else (out, None)
        logits, aux = full_precision(logits), aux if aux is None else full_precision(aux)
        loss = F.cross_entropy(logits, y)
        if aux is not None:
            loss = loss + (model if model is not None else self.supernet).aux_weight * F.cross_entropy(aux, y)
        return loss, logits

    def bypass_scales(self):
        """``{cell type: [E]}`` scales of the partial-channel bypass when they are not the rows' weight sums (GAEA
        PC-DARTS: the edge weights alone), else None."""
        return None

    def on_epoch_start(self, epoch, epochs):
        """Set per-epoch schedules (learning rates, temperatures)."""

    @abc.abstractmethod
    def device_step(self, train_batch, valid_batch):
        """The device work of one iteration: no host sync, no host randomness, no replaced tensors
        (capturable in a CUDA graph); returns detached device tensors."""

    def lrs(self):
        """Current learning rates (and weight decay), for logging."""
        return {}

    def epoch_metrics(self):
        """Method-specific per-epoch values for metrics.jsonl (temperatures, mixing probability, ...)."""
        return {}

    def state_dict(self):
        """Everything needed to resume: α and optimiser states."""
        return {"alphas": {k: v.detach().clone() for k, v in self.alphas.items()}}

    def load_state_dict(self, state):
        with torch.no_grad():
            for k, v in state["alphas"].items():
                self.alphas[k].copy_(v)
        self.reset_graphs()
