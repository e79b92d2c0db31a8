"""Whole-step CUDA graphs (perf.md §3.2, §5): capture a step once, replay it for every batch.

A :class:`StepGraph` wraps a function of tensors (``fn(*args)``, any nesting of tuples, lists and dicts of
tensors) that does only device work: no host synchronisation, no Python-side randomness, no tensors allocated
outside it that it would replace. Eager calls come first (cuDNN autotuning, optimiser state), then the function is
captured with static copies of its inputs; each later call copies the new inputs into those buffers and replays.
A call whose input shapes differ from the captured ones (the last, partial batch of an epoch) runs eagerly, and a
change of ``key()`` (the Python values baked into the graph: learning rates, ``train_arch``, ...) warms up eagerly
again and re-captures, so state a new code path creates (Adam's moments when α steps begin) is made outside the
graph. At every capture the owner's persistent state (:class:`GraphState`) must keep its identity (nothing is
created inside a capture) and, with ``verify``, two eager steps and two replays from one snapshot must agree
before the graph is trusted. A capture that fails leaves nothing behind: the owner's graphs run eagerly with
non-capturable optimisers from then on, and the log says why once.

The capture itself is a backend: :class:`CudaBackend` (``torch.cuda.graph``) or
:class:`~nasrun.graph_emulation.EmulatedBackend`, the CPU stand-in (``trainer.cuda_graphs=emulate``) that records
and replays the aten ops so the same logic is proven without a GPU.
"""

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .console import console
from .errors import UserError

SETTINGS = ("auto", "true", "false", "emulate")


def graphs_wanted(setting, device, distributed=False):
    """``trainer.cuda_graphs`` (auto|true|false|emulate) on ``device`` → a capture backend, or None (eager).
    ``distributed``: several processes, whose steps run collectives between the kernels: eager (auto), or refused."""
    value = str(setting).lower()
    if value not in SETTINGS:
        raise UserError(f"trainer.cuda_graphs must be auto, true, false or emulate, not {setting!r}")
    if distributed:
        if value in ("true", "emulate"):
            raise UserError(f"trainer.cuda_graphs={value} does not yet work with several processes (the steps average "
                            "gradients between their kernels); use trainer.cuda_graphs=auto or false")
        return None
    if value == "true" and device.type != "cuda":
        raise UserError(f"trainer.cuda_graphs=true needs a CUDA device (the run is on {device}); use auto or false "
                        "(or emulate: the CPU stand-in that checks the captured step)")
    if value == "emulate":
        from .graph_emulation import EmulatedBackend

        return EmulatedBackend(device.type)
    return CudaBackend() if value != "false" and device.type == "cuda" else None


class CudaBackend:
    """Capture with ``torch.cuda.graph`` on a side stream; replay with ``CUDAGraph.replay``."""

    name, device_type, exact = "cuda", "cuda", False

    def synchronize(self):
        torch.cuda.synchronize()

    def warmup(self, fn, args):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        return out

    def capture(self, fn, args, pool=None):
        self._stream = torch.cuda.current_stream()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn(*args)
        return graph, out

    def recover(self):
        """After a failed capture: back on the stream the run used, the device idle and not capturing; else stop."""
        try:
            torch.cuda.set_stream(self._stream)
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("the stream is still capturing")
            torch.cuda.synchronize()
            torch.empty(1, device="cuda").add_(1)  # the allocator serves this stream again
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - any failure here means the process cannot go on safely
            raise UserError(f"a CUDA graph capture failed and this torch build could not recover ({exc}); the last "
                            "checkpoint is intact: rerun the same command with trainer.cuda_graphs=false") from exc

    def get_rng_state(self):
        return torch.cuda.get_rng_state()

    def set_rng_state(self, state):
        torch.cuda.set_rng_state(state)


@dataclass
class GraphState:
    """What a captured step reads and writes that outlives it: modules (parameters, buffers), optimisers (their
    state) and other tensors (α, device accumulators). It is snapshotted by the self-check and must keep its
    identity across a capture."""

    modules: list = field(default_factory=list)
    optimizers: list = field(default_factory=list)
    tensors: list = field(default_factory=list)

    def named_tensors(self):
        """``[(name, tensor)]`` of every persistent tensor, in a fixed order."""
        out = []
        for i, m in enumerate(self.modules):
            out += [(f"module{i}.{n}", t) for n, t in (*m.named_parameters(), *m.named_buffers())]
        for i, opt in enumerate(self.optimizers):
            names = {p: n for n, p in enumerate(q for g in opt.param_groups for q in g["params"])}
            for p, s in opt.state.items():
                out += [(f"optimizer{i}.state[{names.get(p, '?')}].{k}", v) for k, v in s.items() if torch.is_tensor(v)]
        return out + [(f"tensor{i}", t) for i, t in enumerate(self.tensors)]

    def identity(self):
        """The objects the state consists of (a capture must not replace or add any)."""
        return ([id(t) for _, t in self.named_tensors()],
                [[(id(p), sorted(s)) for p, s in opt.state.items()] for opt in self.optimizers])

    def optimizer_entries(self):
        """The optimisers' state dicts as they are (shallow), to put back what a failed capture added."""
        return [(opt, [(p, dict(s)) for p, s in opt.state.items()]) for opt in self.optimizers]

    @staticmethod
    def restore_entries(entries):
        for opt, items in entries:
            opt.state.clear()
            for p, s in items:
                opt.state[p] = s


class StepGraph:
    """A function of device tensors, replayed from a captured graph.

    Args:
        fn: the step; returns a (nested) structure of tensors, which stay valid until the next call.
        key: returns a hashable value of everything Python-side the graph bakes in; a change warms up and re-captures.
        name: for the log.
        owner: the :class:`GraphSet` (backend, shared memory pool, persistent state, self-check setting).
        warmup: eager calls before the first capture; ``rewarm``: before every later one.
    """

    WARMUP, REWARM = 3, 1

    def __init__(self, fn, key=lambda: None, name="step", owner=None, warmup=None, rewarm=None):
        self.fn, self.key, self.name = fn, key, name
        self.warmup = self.WARMUP if warmup is None else warmup
        self.rewarm = self.REWARM if rewarm is None else rewarm
        self.owner = owner if owner is not None else GraphSet(None)
        self.failed = None
        self.captures = self.verified = 0
        self.recaptured_after_state = 0
        self.reset()

    def reset(self):
        """Forget the captured graph (after optimiser state or parameters were replaced); warm up again."""
        self.graph = self.static_in = self.static_out = None
        self.graph_key, self.warm_key, self.calls = None, None, 0

    def __call__(self, *args):
        backend = self.owner.backend if self.owner.enabled else None
        flat, spec = tree_flatten(args)
        if (self.failed or backend is None
                or any(not isinstance(t, torch.Tensor) or t.device.type != backend.device_type for t in flat if t is not None)):
            return self.fn(*args)
        shapes = tuple((tuple(t.shape), t.dtype) if t is not None else None for t in flat)
        key = (spec, self.key())
        if self.graph is not None and key == self.graph_key:
            if shapes != self.shapes:
                return self.fn(*args)  # a partial batch: eager, the graph stays
        else:
            if (shapes, key) != self.warm_key:
                self.warm_key, self.calls = (shapes, key), 0
            if self.calls < (self.rewarm if self.captures else self.warmup):
                self.calls += 1
                return backend.warmup(self.fn, args)
            if not self._capture(backend, flat, spec, shapes, key):
                return self.fn(*args) if self.failed else backend.warmup(self.fn, args)
        self._copy_in(flat)
        self.graph.replay()
        return self.static_out

    def _copy_in(self, flat):
        for dst, src in zip(self.static_in, flat):
            if dst is not None and dst is not src:
                dst.copy_(src, non_blocking=True)

    def _capture(self, backend, flat, spec, shapes, key):
        """Capture; False if the call must run eagerly instead (state was created inside it, or the capture failed)."""
        tic = time.perf_counter()
        try:
            return self._capture_checked(backend, flat, spec, shapes, key)
        finally:
            backend.synchronize()
            self.owner.seconds["capture"] += time.perf_counter() - tic

    def _capture_checked(self, backend, flat, spec, shapes, key):
        owner, state = self.owner, self.owner.state()
        identity, entries = state.identity(), state.optimizer_entries()
        old = self.graph  # kept until the new one is captured, so a shared pool stays alive meanwhile
        self.graph = self.static_in = self.static_out = None
        backend.synchronize()
        static_in = [t.clone() if t is not None else None for t in flat]
        try:
            graph, out = backend.capture(self.fn, tree_unflatten(static_in, spec), owner.pool if owner.live(old) else None)
        except Exception as exc:  # noqa: BLE001 - whatever the capture raised, the step goes on eagerly
            GraphState.restore_entries(entries)
            backend.recover()
            owner.disable(f"{self.name}: capture failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
            self.failed = "capture failed"
            return False
        if self.owner.state().identity() != identity:
            GraphState.restore_entries(entries)  # what the capture created is garbage (nothing ran): forget it
            self.recaptured_after_state += 1
            if self.recaptured_after_state > 2:
                owner.disable(f"{self.name}: its step keeps creating state inside the capture")
                self.failed = "state created in capture"
                return False
            self.calls = 0  # warm up once more (eagerly, this call), then capture again
            return False
        stray = self._stray_writes(graph, state, static_in)
        if stray:
            owner.disable(f"{self.name}: the step writes a tensor its owner does not declare persistent ({stray}); "
                          "add it to graph_state()")
            self.failed = "undeclared state"
            return False
        owner.pool = graph.pool()
        self.graph, self.graph_key, self.shapes = graph, key, shapes
        self.static_in, self.static_out = static_in, out
        self.captures += 1
        del old
        if owner.verify:
            tic = time.perf_counter()
            self._verify(backend, state, spec)
            backend.synchronize()
            owner.seconds["verify"] += time.perf_counter() - tic
        return True

    @staticmethod
    def _stray_writes(graph, state, static_in):
        """The emulated backend knows every pre-existing tensor a capture wrote: each must be declared state."""
        writes = getattr(graph, "writes", None)
        if not writes:
            return None
        known = {t.untyped_storage().data_ptr() for _, t in state.named_tensors()}
        known |= {t.untyped_storage().data_ptr() for t in static_in if t is not None}
        stray = [t for k, t in writes.items() if k not in known]
        return ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in stray[:3]) or None

    def _verify(self, backend, state, spec):
        """Two eager steps and two replays from one snapshot (parameters, buffers, optimiser state, other state,
        RNG) must agree (float rtol 1e-5 of each tensor's scale on CUDA, bitwise when emulated; integers exact);
        otherwise warn once naming the worst tensor and run this graph eagerly from now on. The snapshot is put
        back afterwards, so the run goes on as if the check had not happened."""
        named = state.named_tensors()
        snap, rng = [t.detach().clone() for _, t in named], backend.get_rng_state()
        args = tree_unflatten(self.static_in, spec)
        self.fn(*args)
        eager_out = tree_flatten(self.fn(*args))[0]
        eager = [t.detach().clone() for _, t in named] + [t.detach().clone() for t in eager_out if torch.is_tensor(t)]
        self._restore(named, snap, backend, rng)
        self.graph.replay()
        self.graph.replay()
        graphed = [t.detach() for _, t in named] + [t.detach() for t in tree_flatten(self.static_out)[0] if torch.is_tensor(t)]
        names = [n for n, _ in named] + [f"output{i}" for i in range(len(graphed) - len(named))]
        worst = max(((_mismatch(a, b, backend.exact), n) for n, a, b in zip(names, eager, graphed)), default=(0.0, None))
        self._restore(named, snap, backend, rng)
        self.verified += 1
        if worst[0] > 0:
            self.failed = f"self-check: {worst[1]} differs by {worst[0]:.3g}"
            console.print(f"[yellow]cuda graphs: {self.name} failed its self-check (two replays ≠ two eager steps; worst: "
                          f"{worst[1]}, {worst[0]:.3g} relative); it runs eagerly from now on[/yellow]")

    @staticmethod
    def _restore(named, snap, backend, rng):
        with torch.no_grad():
            for (_, t), s in zip(named, snap):
                t.copy_(s)
        backend.set_rng_state(rng)


def _mismatch(a, b, exact):
    """0 if ``a`` and ``b`` agree (bitwise when ``exact``; else float within 1e-5 of a's scale, integers equal),
    else a positive measure of the difference (relative for floats, 1 for any other mismatch)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return float("inf")
    if exact or not a.is_floating_point():
        if torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                 and torch.equal(a.nan_to_num(), b.nan_to_num())):
            return 0.0
        if not a.is_floating_point():
            return 1.0
    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    scale = a.double().abs().max().item() if a.numel() else 0.0
    if exact:
        return max(diff / max(scale, 1e-30), 1e-30)
    return 0.0 if diff <= 1e-5 * max(scale, 1e-6) else diff / max(scale, 1e-30)


class GraphSet:
    """The named :class:`StepGraph` s of one owner (a method, the retrainer), enabled or not as a whole.

    Its graphs share one memory pool, so several captured units (TSE's rollout and weight steps, a step and
    DARTS-PT's scoring pass) cost one step's activations, not one each. This is safe because they never
    run concurrently and every caller consumes a replay's outputs before the next replay of any of them
    (what a graph keeps between replays lives outside the pool: parameters, optimiser state, inputs).

    Args:
        backend: :class:`CudaBackend`, an emulated backend, True (CUDA) or None/False (eager).
        state: returns the owner's :class:`GraphState`.
        verify: the run-time self-check at every capture (``trainer.cuda_graphs_verify``).
    """

    def __init__(self, backend=None, state=None, verify=True):
        self.backend = CudaBackend() if backend is True else (backend or None)
        self.enabled = self.backend is not None
        self.state, self.verify = state or GraphState, verify
        self.graphs, self.pool, self.disabled = {}, None, None
        self.seconds = {"capture": 0.0, "verify": 0.0}  # warm-up excluded; the self-check's share apart

    def take_seconds(self):
        """``{graph_capture_seconds, graph_verify_seconds}`` since the last call (per epoch in metrics.jsonl; the
        capture figure includes the self-check), or {} when the graphs are off."""
        if self.backend is None:
            return {}
        out = {f"graph_{k}_seconds": round(v, 3) for k, v in self.seconds.items()}
        self.seconds = {"capture": 0.0, "verify": 0.0}
        return out

    def run(self, name, fn, key, *args):
        """``fn(*args)``, through its graph when enabled."""
        if not self.enabled:
            return fn(*args)
        if name not in self.graphs:
            self.graphs[name] = StepGraph(fn, key, name, owner=self)
        return self.graphs[name](*args)

    def live(self, old=None):
        """Whether a graph of this set still holds the pool (a new capture must share it)."""
        return old is not None or any(g.graph is not None for g in self.graphs.values())

    def reset(self):
        for g in self.graphs.values():
            g.reset()

    def disable(self, reason):
        """Every graph of the set eager from now on, optimisers non-capturable; said once."""
        if self.disabled is None:
            console.print(f"[yellow]cuda graphs: {reason}; running eagerly[/yellow]")
        self.disabled, self.enabled = reason, False
        for g in self.graphs.values():
            g.reset()
        for opt in self.state().optimizers:
            set_capturable(opt, False)


def copy_from_host(dst, src):
    """``dst.copy_(src)`` for a tensor drawn on the host before a step: through pinned memory when ``dst`` is on a GPU,
    so the copy is asynchronous (a pageable source makes a non-blocking copy synchronous)."""
    if dst.device.type == "cuda" and not src.is_pinned():
        src = src.pin_memory()
    dst.copy_(src, non_blocking=True)


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
