"""Whole-step CUDA graphs (perf.md §3.2): capture a step once, replay it for every batch.

A :class:`StepGraph` wraps a function of tensors (``fn(*args)``, any nesting of tuples, lists and dicts
of tensors) that does only device work: no host synchronisation, no Python-side randomness, no
tensors allocated outside it that it would replace. The first calls run eagerly on a side stream (cuDNN
autotuning, optimiser state), then the function is captured with static copies of its inputs; each
later call copies the new inputs into those buffers and replays the graph. A call whose input shapes
differ from the captured ones (the last, partial batch of an epoch) runs eagerly, and a change of
``key()`` (the Python values baked into the graph: learning rates, weight decay, ...) re-captures.
If capture fails, the step runs eagerly from then on and the reason is logged once.
"""

import warnings

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .engine import console
from .errors import UserError


def graphs_wanted(setting, device):
    """``trainer.cuda_graphs`` (auto|true|false) on ``device`` → bool."""
    value = str(setting).lower()
    if value not in ("auto", "true", "false"):
        raise UserError(f"trainer.cuda_graphs must be auto, true or false, not {setting!r}")
    if value == "true" and device.type != "cuda":
        raise UserError(f"trainer.cuda_graphs=true needs a CUDA device (the run is on {device}); use auto or false")
    return value != "false" and device.type == "cuda"


class StepGraph:
    """A function of device tensors, replayed from a CUDA graph.

    Args:
        fn: the step; returns a (nested) structure of tensors, which stay valid until the next call.
        key: returns a hashable value of everything Python-side the graph bakes in; a change re-captures.
        name: for the log.
        warmup: eager calls before the first capture.
    """

    def __init__(self, fn, key=lambda: None, name="step", warmup=3, owner=None):
        self.fn, self.key, self.name, self.warmup, self.owner = fn, key, name, warmup, owner
        self.failed = None
        self.reset()
        self.captures = 0

    def reset(self):
        """Forget the captured graph (after optimiser state or parameters were replaced)."""
        self.graph = self.static_in = self.static_out = None
        self.graph_key = None
        self.calls = 0

    def __call__(self, *args):
        flat, spec = tree_flatten(args)
        if self.failed or any(not isinstance(t, torch.Tensor) or t.device.type != "cuda" for t in flat if t is not None):
            return self.fn(*args)
        shapes = tuple((tuple(t.shape), t.dtype) if t is not None else None for t in flat)
        key = (shapes, spec, self.key())
        if self.graph is not None and key[0] != self.graph_key[0]:
            return self.fn(*args)  # a partial batch: eager, the graph stays
        if self.graph is None or key != self.graph_key:
            if self.calls < self.warmup:
                self.calls += 1
                return self._side_stream(args)
            try:
                self._capture(flat, spec, key)
            except RuntimeError as exc:  # an op that cannot be captured: say why once, then run eagerly
                self.reset()
                self.failed = str(exc).splitlines()[0]
                console.print(f"[yellow]cuda graphs: {self.name} runs eagerly ({self.failed})[/yellow]")
                torch.cuda.synchronize()
                return self.fn(*args)
        for dst, src in zip(self.static_in, flat):
            if dst is not None:
                dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_out

    def _side_stream(self, args):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def _capture(self, flat, spec, key):
        old = self.graph  # kept until the new one is captured, so a shared pool stays alive meanwhile
        self.graph = self.static_in = self.static_out = None
        torch.cuda.synchronize()
        self.static_in = [t.clone() if t is not None else None for t in flat]
        graph = torch.cuda.CUDAGraph()
        alive = self.owner is not None and (old is not None or any(g.graph is not None for g in self.owner.graphs.values()))
        with torch.cuda.graph(graph, pool=self.owner.pool if alive else None):
            self.static_out = self.fn(*tree_unflatten(self.static_in, spec))
        if self.owner is not None:
            self.owner.pool = graph.pool()
        self.graph, self.graph_key = graph, key
        self.captures += 1
        del old


class GraphSet:
    """The named :class:`StepGraph` s of one owner (a method, the retrainer), enabled or not as a whole.

    Its graphs share one memory pool, so several captured units (TSE's rollout and weight steps, a step and
    DARTS-PT's scoring pass) cost one step's activations, not one each. This is safe because they never
    run concurrently and every caller consumes a replay's outputs before the next replay of any of them
    (what a graph keeps between replays lives outside the pool: parameters, optimiser state, inputs).
    """

    def __init__(self, enabled=False):
        self.enabled, self.graphs, self.pool = enabled, {}, None

    def run(self, name, fn, key, *args):
        """``fn(*args)``, through its graph when enabled."""
        if not self.enabled:
            return fn(*args)
        if name not in self.graphs:
            self.graphs[name] = StepGraph(fn, key, name, owner=self)
        return self.graphs[name](*args)

    def reset(self):
        for g in self.graphs.values():
            g.reset()


def optimizer_key(optimizers):
    """What a captured optimiser step bakes in: each optimiser's identity and scalar hyper-parameters."""
    return tuple((id(opt), tuple((k, v) for g in opt.param_groups for k, v in sorted(g.items())
                                 if k != "params" and isinstance(v, (bool, int, float, str, tuple, type(None)))))
                 for opt in optimizers)


# Warm-up and partial-batch steps run a capturable Adam outside a graph on purpose.
warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")


def set_capturable(optimizer, capturable):
    """Switch an Adam-style optimiser between capturable (step counts on the device, needed inside a CUDA
    graph) and not, moving its ``step`` states accordingly (so a checkpoint of either kind loads into both)."""
    if not any("capturable" in g for g in optimizer.param_groups):
        return
    for g in optimizer.param_groups:
        g["capturable"] = capturable
        for p in g["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state and torch.is_tensor(state["step"]):
                state["step"] = state["step"].to(p.device if capturable else "cpu")
