"""A CPU stand-in for CUDA-graph capture (perf.md §5): the backend ``trainer.cuda_graphs=emulate`` and the tests use.

A CUDA graph records kernels, not Python: at replay every recorded kernel runs again on the same memory with the
arguments it was captured with. :class:`EmulatedBackend` reproduces that on any device with a
``TorchDispatchMode``: the captured call is recorded op by op (aten ops, the level a CUDA graph sees), its effects
on tensors that existed before the capture are undone afterwards (a real capture executes nothing), and a replay
runs the recorded ops again on the captured tensors. So a Python number baked into an op stays the number it was at
capture, and state created by the captured call (an optimiser's ``zeros_like`` first step) is created again at
every replay: both change the trajectory, which the tests compare with the eager one bitwise.

At capture it also refuses what a CUDA capture forbids: host synchronisation (``.item()``, ``bool(t)``,
``.cpu()``, ``.tolist()``, ops that return a host value), data-dependent shapes (``nonzero``, boolean indexing,
``masked_select``, ``unique``), tensor literals made from host data (``torch.tensor``), and random draws on a
generator other than the default one.
"""

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten


class CaptureRefused(RuntimeError):
    """The captured call did something a CUDA graph cannot record (the message says what)."""


# ops whose output shape depends on tensor values (a CUDA capture cannot size them without a host sync)
DATA_DEPENDENT = {"nonzero", "nonzero_static", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
                  "unique_consecutive", "bincount", "repeat_interleave", "_local_scalar_dense", "is_nonzero", "equal",
                  "item", "argwhere"}
INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}  # refused with boolean index tensors
LITERALS = {"lift_fresh", "lift_fresh_copy", "lift"}


HOST_VALUES = ("bool", "int", "float", "complex", "Scalar", "SymInt", "SymFloat", "SymBool", "number")


def _host_value(t):
    """True for schema return types that are host numbers (reading one is a device → host sync)."""
    return any(str(t).startswith(h) or str(t).startswith(f"List[{h}") for h in HOST_VALUES)


class _Recorder(TorchDispatchMode):
    """Records every aten op of a call, snapshots pre-existing storages before their first write, and refuses
    what a CUDA capture cannot hold."""

    def __init__(self):
        super().__init__()
        self.ops = []  # (func, args, kwargs, outputs to refresh at replay, or None for a view op)
        self.created = set()  # storages allocated by the captured call (its memory pool)
        self.saved = {}  # storage key → (storage, its copy before the captured call used it, a tensor on it)
        self.generators = {None, torch.default_generator}

    @staticmethod
    def _key(t):
        return t.untyped_storage().data_ptr()

    def _refuse(self, func, why):
        raise CaptureRefused(f"{func.__name__}: {why}{_where()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        base = func._schema.name.split("::")[-1]
        if base.startswith("_record_function"):
            return func(*args, **kwargs)  # profiler annotations: no device work, nothing to replay
        if base in DATA_DEPENDENT:
            self._refuse(func, "host synchronisation or a data-dependent shape (not capturable)")
        if base in LITERALS:
            self._refuse(func, "a tensor literal from host data inside the step (not capturable; make it once, "
                               "outside the step)")
        if base in INDEXING and any(isinstance(t, torch.Tensor) and t.dtype == torch.bool
                                    for t in tree_flatten((args, kwargs))[0]):
            self._refuse(func, "boolean indexing (a data-dependent shape, not capturable)")
        if kwargs.get("generator") not in self.generators:
            self._refuse(func, "a random draw on a generator other than the default one (not captured with the graph)")
        if any(_host_value(r.type) for r in func._schema.returns):
            self._refuse(func, "returns a host value (a host synchronisation, not capturable)")
        for t in tree_flatten((args, kwargs))[0]:
            self._touch(t)  # every input: some kernels write inputs their schema does not mark (BN running stats)
        out = func(*args, **kwargs)
        aliasing = [r.alias_info is not None for r in func._schema.returns]
        if any(aliasing) and not any(a.alias_info is not None and a.alias_info.is_write for a in func._schema.arguments):
            self.ops.append((func, args, kwargs, None))  # a view: it stays a view of the captured tensors
            return out
        returns = _returns(func, out)
        refresh = []  # per output leaf: the captured tensor a replay refreshes (None: an alias of an input)
        for alias, o in zip(aliasing, returns):
            for t in tree_flatten(o)[0]:
                fresh = isinstance(t, torch.Tensor) and not alias
                refresh.append(t if fresh else None)
                if fresh and t.untyped_storage().nbytes():
                    self.created.add(self._key(t))
        self.ops.append((func, args, kwargs, refresh))
        return out

    def _touch(self, t):
        """Keep a copy of a pre-existing storage the first time the captured call uses it."""
        if not isinstance(t, torch.Tensor) or not t.untyped_storage().nbytes():
            return
        key = self._key(t)
        if key not in self.created and key not in self.saved:
            self.saved[key] = (t.untyped_storage(), t.untyped_storage().clone(), t)

    def undo(self):
        """Put back every pre-existing storage the recorded call changed (a real capture executes nothing); returns
        ``{storage key: tensor}`` of those it had written."""
        written = {}
        for key, (storage, copy, t) in self.saved.items():
            if not torch.equal(_bytes(storage), _bytes(copy)):
                written[key] = t
                storage.copy_(copy)
        self.saved = {}
        return written


def _where():
    """`` at file:line`` of the innermost nasrun frame outside the graph code (where the step did it)."""
    import os
    import traceback

    here = os.path.dirname(os.path.abspath(__file__))
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(here) and os.path.basename(frame.filename) not in ("graph_emulation.py", "graphs.py"):
            return f" at {os.path.relpath(frame.filename, os.path.dirname(here))}:{frame.lineno}"
    return ""


def _returns(func, out):
    """An op's result as one entry per schema return."""
    n = len(func._schema.returns)
    return () if n == 0 else (out,) if n == 1 else tuple(out)


def _bytes(storage):
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class EmulatedGraph:
    """The recorded ops of one capture; :meth:`replay` runs them again on the captured tensors."""

    def __init__(self, ops, writes):
        self.ops, self.writes = ops, writes

    def replay(self):
        with torch.no_grad():
            for func, args, kwargs, refresh in self.ops:
                if refresh is None:
                    continue  # views alias the captured storages, which the other ops refresh in place
                out = func(*args, **kwargs)
                returns = _returns(func, out)
                for dst, src in zip(refresh, tree_flatten(list(returns))[0]):
                    if dst is not None and dst is not src:
                        dst.copy_(src)

    def pool(self):
        return None


def _allow_capturable_on(device_type):
    """Capturable Adam (step counts on the device, no ``.item()``) on the emulated device: torch only allows it on
    devices with graphs, so the emulation widens that list (nothing else in the optimiser changes)."""
    import torch.optim.adam as adam

    for mod in (adam,):
        original = mod._get_capturable_supported_devices
        if getattr(original, "_nasrun_emulated", None) == device_type:
            continue

        def widened(*a, _original=original, **k):
            return [*_original(*a, **k), device_type]

        widened._nasrun_emulated = device_type
        mod._get_capturable_supported_devices = widened


class _HostGuard:
    """During a capture, the tensor methods that read device memory on the host without dispatching an aten op."""

    METHODS = ("cpu", "tolist", "numpy", "item", "__bool__", "__float__", "__int__", "__index__")

    def __enter__(self):
        self.saved = {m: getattr(torch.Tensor, m) for m in self.METHODS}
        for m in self.METHODS:
            setattr(torch.Tensor, m, self._refuser(m))

    def __exit__(self, *exc):
        for m, f in self.saved.items():
            setattr(torch.Tensor, m, f)

    @staticmethod
    def _refuser(name):
        def refuse(self, *a, **k):
            raise CaptureRefused(f"Tensor.{name}: host synchronisation inside the step (not capturable){_where()}")

        return refuse


class EmulatedBackend:
    """:class:`~nasrun.graphs.StepGraph`'s backend without a GPU: capture records, replay re-runs (module docstring).

    Args:
        device_type: the device whose tensors it captures (``cpu``).
        fail_capture: a test hook: an exception to raise at the next capture (then cleared), as a failing
            ``torch.cuda.graph`` would.
    """

    name = "emulated"
    exact = True  # a replay re-runs the same CPU kernels: eager and replayed trajectories agree bitwise

    def __init__(self, device_type="cpu", fail_capture=None):
        self.device_type, self.fail_capture = device_type, fail_capture
        self.captures = []  # every capture's record (tests read what it wrote)
        _allow_capturable_on(device_type)

    def synchronize(self):
        """Nothing to wait for: every CPU op has finished when it returns."""

    def warmup(self, fn, args):
        return fn(*args)

    def capture(self, fn, args, pool=None):
        """Record ``fn(*args)``; returns ``(graph, outputs)``. The call's effects on existing tensors are undone and
        the CPU generator is put back, as a capture runs nothing."""
        rng = torch.get_rng_state()
        recorder, written = _Recorder(), {}
        try:
            if self.fail_capture is not None:
                exc, self.fail_capture = self.fail_capture, None
                raise exc
            with recorder, _HostGuard():
                out = fn(*args)
        finally:
            written = recorder.undo()
            torch.set_rng_state(rng)
        graph = EmulatedGraph(recorder.ops, written)
        self.captures.append(graph)
        return graph, out

    def recover(self):
        """After a failed capture: nothing to put back (no stream, no allocator pool)."""

    def get_rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state):
        torch.set_rng_state(state)
