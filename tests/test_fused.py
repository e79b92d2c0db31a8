"""Fused mixed operations vs the per-op reference cells (perf.md §4): same function, same gradients,
same BN statistics, in float64 to 1e-10 relative, for every space."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from nasrun.spaces import get_space
from nasrun.spaces.fused import SourcePlan, _joined_view, set_fused

SPACES = [("nb201", {"C": 4, "N": 1}), ("nb201", {"C": 4, "N": 1, "track_running_stats": True}),
          ("nb201", {"C": 4, "N": 1, "track_running_stats": True, "conv_bias": False}),  # DrNAS's NB201 cells
          ("nb201", {"C": 4, "N": 1, "affine": True, "track_running_stats": True}), ("nb201_noskip", {"C": 4, "N": 1}),
          ("darts", {"C": 4, "layers": 3}), ("darts_7op", {"C": 4, "layers": 3}), ("darts_s1", {"C": 4, "layers": 3}),
          ("darts_s2", {"C": 4, "layers": 3}), ("darts_s3", {"C": 4, "layers": 3}), ("darts_s4", {"C": 4, "layers": 3}),
          ("darts_fixed", {"C": 4, "layers": 3}), ("amended_deep", {"C": 4, "layers": 4}),
          ("nb1shot1_s1", {"C": 4, "layers": 3}), ("nb1shot1_s2", {"C": 4, "layers": 3}),
          ("nb1shot1_s3", {"C": 4, "layers": 3}), ("nb201", {"C": 4, "N": 1, "partial_channels": 2}),
          ("darts", {"C": 8, "layers": 3, "partial_channels": 4}), ("darts_7op", {"C": 4, "layers": 3, "partial_channels": 2}),
          ("darts", {"C": 4, "layers": 3, "search_drop_path": 0.4, "search_drop_path_ramp": False}),
          ("darts_s3", {"C": 8, "layers": 3, "search_drop_path": 0.3, "partial_channels": 2}),
          ("darts", {"C": 4, "layers": 3, "skip_dropout": 0.6}),
          ("darts", {"C": 8, "layers": 3, "skip_dropout": 0.6, "search_drop_path": 0.3, "partial_channels": 2})]


def close(ref, got, rtol):
    """max |ref − got| ≤ rtol·max |ref|; tensors that are zero up to rounding (the gradient of a conv bias in
    front of a batch-statistics BN) are compared absolutely against the rounding level."""
    scale = ref.abs().max().item()
    if scale < 1e-12:
        return (ref - got).abs().max().item() < 1e-14
    return (ref - got).abs().max().item() <= rtol * scale


def run_both(name, sizes, train=True, dtype=torch.float64, masked=None, seed=0):
    """Logits, loss, gradients (w and α) and state dict of the per-op and the fused supernet on one batch."""
    torch.manual_seed(seed)
    space = get_space(name, **sizes)
    ref = set_fused(space.build_supernet(10).to(dtype), False)
    if hasattr(ref, "on_epoch_start"):
        ref.on_epoch_start(5, 10)  # search drop-path at its epoch-5 probability
    fused = set_fused(copy.deepcopy(ref), True)
    for net in (ref, fused):
        net.train(train)
    alphas = {k: torch.randn(*s, dtype=dtype, requires_grad=True) for k, s in space.alpha_shapes().items()}
    x, y = torch.randn(6, 3, 16, 16, dtype=dtype), torch.randint(0, 10, (6,))
    out = []
    for net in (ref, fused):
        torch.manual_seed(1)  # the noise op (S4) draws the same numbers in both forwards
        weights = {k: a.softmax(-1) for k, a in alphas.items()}
        if masked:
            weights = {k: masked(w) for k, w in weights.items()}
        logits = net(x, weights)
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, [*net.parameters(), *alphas.values()], allow_unused=True)
        out.append({"logits": logits, "loss": loss, "grads": grads, "state": net.state_dict()})
    return space, ref, out


@pytest.mark.parametrize("name, sizes", SPACES, ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in s.items())}" for n, s in SPACES])
def test_fused_equals_per_op_float64(name, sizes):
    _, ref, (a, b) = run_both(name, sizes)
    assert close(a["logits"], b["logits"], 1e-10) and close(a["loss"], b["loss"], 1e-10)
    names = [n for n, _ in ref.named_parameters()] + ["alpha"] * (len(a["grads"]) - len(list(ref.parameters())))
    for n, ga, gb in zip(names, a["grads"], b["grads"]):
        assert (ga is None) == (gb is None), n
        if ga is not None:
            assert close(ga, gb, 1e-10), n
    assert a["state"].keys() == b["state"].keys()
    for k, v in a["state"].items():  # running statistics and batch counts where tracked
        assert close(v.double(), b["state"][k].double(), 1e-10), k
    moved = [k for k, v in a["state"].items() if "running_mean" in k and v.abs().max() > 0
             and any(part in k for part in (".edges.", ".ops.", ".blocks.", ".proj"))]  # inside the mixed ops
    if "track_running_stats" not in sizes and name.startswith("nb201"):
        assert not moved
    elif not name.startswith("nb201"):
        assert moved  # the DARTS and 1Shot1 supernets track statistics: the comparison above is not vacuous


@pytest.mark.parametrize("name, sizes", [("nb201", {"C": 4, "N": 1, "track_running_stats": True}),
                                         ("darts", {"C": 4, "layers": 3}), ("nb1shot1_s2", {"C": 4, "layers": 3})])
def test_fused_equals_per_op_in_eval_mode(name, sizes):
    torch.manual_seed(0)
    space = get_space(name, **sizes)
    ref = set_fused(space.build_supernet(10).double(), False)
    with torch.no_grad():  # distinct running statistics per edge, so eval mode must use each edge's own
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    fused = set_fused(copy.deepcopy(ref), True)
    ref.eval()
    fused.eval()
    weights = {k: torch.randn(*s, dtype=torch.float64).softmax(-1) for k, s in space.alpha_shapes().items()}
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    assert close(ref(x, weights), fused(x, weights), 1e-10)


def test_fused_float32_and_masked_weights():
    """float32 to 1e-5, and with DARTS-PT's masking / one-hot discretisation (exact zeros in the weights)."""
    _, _, (a, b) = run_both("darts", {"C": 4, "layers": 3}, dtype=torch.float32)
    assert close(a["logits"], b["logits"], 1e-5)

    def one_hot(w):
        return F.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype) + 0 * w

    _, _, (a, b) = run_both("nb201", {"C": 4, "N": 1}, masked=one_hot)
    assert close(a["logits"], b["logits"], 1e-10)
    assert all(close(x, y, 1e-10) for x, y in zip(a["grads"][-1:], b["grads"][-1:]))


def test_fused_is_the_default_and_keeps_parameter_names():
    space = get_space("darts", C=4, layers=3)
    net = space.build_supernet(10)
    cells = [m for m in net.modules() if hasattr(m, "fused")]
    assert cells and all(m.fused for m in cells)
    ref_keys = set(set_fused(copy.deepcopy(net), False).state_dict())
    assert set(net.state_dict()) == ref_keys
    assert not any("sources" in k for k in ref_keys)  # the fused plans add no state


@pytest.mark.parametrize("method", ["darts", "darts_2nd", "tse_darts", "sp_darts", "amended_darts"])
def test_search_trajectory_is_the_same_in_float64(method):
    """Ten steps of every seed method (functional second-order passes, TSE's rollout copy, SP's
    temperatures) move α and w alike with either forward: the fused ops change no maths anywhere."""
    from .conftest import tiny_method

    g = torch.Generator().manual_seed(0)
    data = [tuple((torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g))
                  for _ in range(2)) for _ in range(10)]
    ends = []
    for fused in (False, True):
        extra = ["method.inner_steps=5"] if method == "tse_darts" else []
        _, sup, m = tiny_method([f"method={method}", "space.C=8", *extra], dtype=torch.float64)
        set_fused(sup, fused)
        torch.manual_seed(3)
        m.on_epoch_start(2, 10)
        for t, v in data:
            m.step(t, v)
        ends.append([*m.arch_parameters(), *sup.parameters()])
    for a, b in zip(*ends):
        assert close(a.detach(), b.detach(), 1e-10)


@pytest.mark.parametrize("name, sizes", [("nb201", {"C": 4, "N": 1, "track_running_stats": True}),
                                         ("darts", {"C": 4, "layers": 3}),
                                         ("darts", {"C": 8, "layers": 3, "partial_channels": 2})])
def test_fused_with_pruned_ops_equals_per_op_float64(name, sizes):
    """A progressive stage's op masks (DrNAS): the fused plans hold only the kept ops; same function, gradients
    and BN statistics as the per-op cell that skips the pruned ones, including an edge that keeps only `none`."""
    space = get_space(name, **sizes)
    g = torch.Generator().manual_seed(3)
    masks = {}
    for k, (E, K) in space.alpha_shapes().items():
        m = torch.rand(E, K, generator=g) < 0.5
        m[torch.arange(E), torch.randint(K, (E,), generator=g)] = True  # every edge keeps at least one op
        m[0] = False
        m[0, 0] = True  # edge 0 keeps only `none`
        masks[k] = m

    def masked(w):
        m = next(v for v in masks.values() if v.shape == w.shape)
        return w * m / (w * m).sum(-1, keepdim=True)

    torch.manual_seed(0)
    ref = set_fused(space.build_supernet(10).double(), False)
    ref.set_active_ops(masks)
    fused = set_fused(copy.deepcopy(ref), True)
    alphas = {k: torch.randn(*s, dtype=torch.float64, requires_grad=True) for k, s in space.alpha_shapes().items()}
    x, y = torch.randn(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    out = []
    for net in (ref, fused):
        logits = net(x, {k: masked(a.softmax(-1)) for k, a in alphas.items()})
        loss = F.cross_entropy(logits, y)
        grads = torch.autograd.grad(loss, [*net.parameters(), *alphas.values()], allow_unused=True, materialize_grads=True)
        out.append((logits, grads, net.state_dict()))
    assert close(out[0][0], out[1][0], 1e-10)
    names = [n for n, _ in ref.named_parameters()] + list(alphas)
    # conv biases in front of batch-statistics BN have exactly zero gradient: both sides are rounding (≤ 1e-13)
    bad = [(n, (a - b).abs().max().item(), a.abs().max().item()) for n, a, b in zip(names, out[0][1], out[1][1])
           if not (close(a, b, 1e-10) or max(a.abs().max().item(), b.abs().max().item()) < 1e-12)]
    assert not bad, bad[:4]
    assert all(close(a.double(), b.double(), 1e-10) for a, b in zip(out[0][2].values(), out[1][2].values()))


class _OpNames(TorchDispatchMode):
    """The names of the aten ops run, and the concatenations that read a tensor of ``storages``."""

    def __init__(self, storages):
        super().__init__()
        self.names, self.storages, self.joined = [], storages, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func._schema.name.split("::")[-1])
        if self.names[-1] in ("cat", "stack"):
            self.joined += any(t.untyped_storage().data_ptr() in self.storages for t in args[0])
        return func(*args, **(kwargs or {}))


def _slots_packed(net):
    """For every fused term with several members and every tensor kind: whether its members lie side by side."""
    return [_joined_view(ts) is not None for plan in net.modules() if isinstance(plan, SourcePlan)
            for t in plan.convs if len(t.modules) > 1
            for ts in zip(*(list(m.parameters()) + list(m.buffers()) for m in t.modules)) if ts[0].dim()]


@pytest.mark.parametrize("name, sizes", [("nb201", {"C": 4, "N": 1, "track_running_stats": True}),
                                         ("darts", {"C": 4, "layers": 3})])
def test_fused_forward_reads_packed_filters_and_statistics(name, sizes):
    """No per-forward concatenation of filters or BN statistics (issue 21 item 7): the members' tensors are packed
    side by side at construction and again after ``to()`` (dtype, memory format) and a deep copy, so no ``cat`` or
    ``stack`` of a training forward reads a parameter or buffer (the reduction cells' factorized-reduce filters are
    padded to one 2×2 filter first) and running statistics need no write-back copy; the values still follow an
    optimiser step (they are the parameters' own storage)."""
    space = get_space(name, **sizes)
    net = space.build_supernet(10)
    for copied in (net, net.double(), copy.deepcopy(net), net.to(memory_format=torch.channels_last)):
        slots = _slots_packed(copied)
        assert slots and all(slots)
    net = copy.deepcopy(net)
    weights = {k: torch.rand(*s, dtype=torch.float64).softmax(-1) for k, s in space.alpha_shapes().items()}
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    ref = set_fused(copy.deepcopy(net), False)
    storages = {t.untyped_storage().data_ptr() for t in [*net.parameters(), *net.buffers()]}
    with _OpNames(storages) as ops:
        out = net(x, weights)
    assert ops.joined == 0 and "_foreach_copy_" not in ops.names
    loose = copy.deepcopy(net)
    for t in [*loose.parameters(), *loose.buffers()]:  # each tensor in a storage of its own: concatenated
        t.data = t.data.clone()
    with _OpNames({t.untyped_storage().data_ptr() for t in [*loose.parameters(), *loose.buffers()]}) as ops:
        assert close(loose(x, weights), out, 1e-10)
    assert ops.joined > 0 and "_foreach_copy_" in ops.names
    assert close(ref(x, weights), out, 1e-10)
    assert all(close(a, b, 1e-10) for a, b in zip(ref.buffers(), net.buffers()))  # statistics written in place
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(x, weights), torch.arange(4)).backward()
    opt.step()
    ref.load_state_dict(net.state_dict())
    assert close(ref(x, weights), net(x, weights), 1e-10)


def test_fused_concatenates_members_that_are_not_packed():
    """``functional_call`` (second-order DARTS's unrolled weights) swaps in tensors that are not side by side: the
    fused forward concatenates them, and value and gradients follow the swapped tensors, as the per-op forward."""
    space = get_space("darts", C=4, layers=3)
    fused = space.build_supernet(10).double()
    ref = set_fused(copy.deepcopy(fused), False)
    params = {n: (p.detach() * 1.5).requires_grad_() for n, p in fused.named_parameters()}
    assert not _slots_packed(fused) or all(_slots_packed(fused))
    weights = {k: torch.rand(*s, dtype=torch.float64).softmax(-1) for k, s in space.alpha_shapes().items()}
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.arange(4)
    grads = []
    for net in (ref, fused):
        loss = F.cross_entropy(functional_call(net, params, (x, weights)), y)
        grads.append((loss, torch.autograd.grad(loss, list(params.values()))))
    assert close(grads[0][0], grads[1][0], 1e-10)
    assert all(close(a, b, 1e-10) for a, b in zip(grads[0][1], grads[1][1]))
    loss = F.cross_entropy(fused(x, weights), y)
    assert not close(loss, grads[1][0], 1e-3)  # the swapped tensors were used, not the module's own


def test_fused_mix_keeps_float32_weights_under_bf16_autocast():
    """Under bf16 autocast the batched mix of the pools and skip runs in the weights' float32 (as the per-op
    w · op(x) does): a change of the skip weight far below bf16's resolution (2⁻⁸) still moves the output, and
    the output matches the per-op cell's to bf16 accuracy."""
    space = get_space("nb201", C=4, N=1)
    net = space.build_supernet(10)
    ref = set_fused(copy.deepcopy(net), False)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    w = torch.rand(6, 5).softmax(-1)
    nudged = w.clone()
    nudged[:, 1] *= 1 + 1e-4  # skip_connect
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b, r = net(x, {"normal": w}), net(x, {"normal": nudged}), ref(x, {"normal": w})
    assert not torch.equal(a, b)
    assert close(r.float(), a.float(), 3e-2)
