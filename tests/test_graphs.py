"""CUDA-graph seams that the CPU can check (perf.md §3.2): graph keys, capturable optimiser state across
paths, the persistent TSE rollout, and the step split into host and device work."""

import copy

import pytest
import torch

from nasrun.graphs import GraphSet, StepGraph, graphs_wanted, set_capturable
from nasrun.errors import UserError

from .conftest import tiny_method


def batches(n, seed=0, size=8, batch=8):
    """``n`` (train, valid) pairs of random 4-class batches."""
    g = torch.Generator().manual_seed(seed)
    return [tuple((torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 4, (batch,), generator=g))
                  for _ in range(2)) for _ in range(n)]


def test_graph_key_follows_the_baked_in_values():
    _, _, m = tiny_method(["method=darts"])
    m.on_epoch_start(0, 10)
    k0 = m.graph_key()
    m.on_epoch_start(0, 10)
    assert m.graph_key() == k0  # same lr: the captured step stays
    m.on_epoch_start(3, 10)
    assert m.graph_key() != k0  # new lr: re-capture
    k1 = m.graph_key()
    m.weight_decay = 5e-3  # DARTS-ADA's raise
    assert m.graph_key() != k1


def test_graphs_setting():
    cpu = torch.device("cpu")
    assert graphs_wanted("auto", cpu) is None and graphs_wanted("false", cpu) is None  # eager: no backend
    with pytest.raises(UserError, match="needs a CUDA device"):
        graphs_wanted("true", cpu)
    with pytest.raises(UserError, match="auto, true, false or emulate"):
        graphs_wanted("sometimes", cpu)


def test_step_graph_on_cpu_tensors_runs_the_function():
    calls = []
    g = StepGraph(lambda x: (calls.append(1), x * 2)[1])
    assert torch.equal(g(torch.ones(2)), torch.full((2,), 2.0)) and calls == [1] and g.graph is None
    assert GraphSet(False).run("f", lambda x: x + 1, lambda: None, torch.zeros(1)).item() == 1


def test_capturable_adam_state_loads_into_the_eager_path():
    """A checkpoint written with capturable Adam (the graph path) resumes eagerly on the CPU and continues
    exactly as one written without."""
    _, _, a = tiny_method(["method=darts"], seed=0)
    for b in batches(2):
        a.step(*b)
    state = copy.deepcopy(a.state_dict())
    graph_state = copy.deepcopy(state)
    for g in graph_state["arch_opt"]["param_groups"]:
        g["capturable"] = True  # what a CUDA-graph run saves (step counts were on its device)
    runs = []
    for s in (state, graph_state):
        _, _, m = tiny_method(["method=darts"], seed=1)
        m.load_state_dict(s)
        assert not m.arch_opt.param_groups[0]["capturable"]
        torch.manual_seed(0)
        for b in batches(2, seed=1):
            m.step(*b)
        runs.append([p.detach().clone() for p in [*m.supernet.parameters(), *m.arch_parameters()]])
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_set_capturable_moves_step_counts():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(2)
    opt.step()
    set_capturable(opt, False)
    assert opt.state[p]["step"].device.type == "cpu" and opt.param_groups[0]["capturable"] is False
    set_capturable(torch.optim.SGD([p], lr=0.1), True)  # no capturable flag: untouched, no error


def reference_tse_group(m, trains):
    """TSE group as rubinxin/TSE writes it: a fresh deep copy of w and its optimiser per group, α.grad
    accumulated by backward, one Adam step, then the real w steps."""
    shadow = copy.deepcopy(m.supernet)
    opt = torch.optim.SGD(shadow.parameters(), lr=0.0)
    opt.load_state_dict(copy.deepcopy(m.w_opt.state_dict()))
    for a in m.arch_parameters():
        a.grad = None
    for x, y in trains:
        opt.zero_grad(set_to_none=True)
        loss, _ = m.loss(x, y, m.edge_weights(), model=shadow)
        loss.backward()
        opt.step()
    m.arch_opt.step()
    m.arch_opt.zero_grad(set_to_none=True)
    for x, y in trains:
        m.weight_step((x, y))


def test_tse_persistent_rollout_equals_a_fresh_copy_per_group():
    overrides = ["method=tse_darts", "space=darts", "space.C=4", "space.layers=3"]  # BN buffers tracked
    _, _, ours = tiny_method(overrides, seed=0)
    _, _, ref = tiny_method(overrides, seed=0)
    ref.supernet.load_state_dict(ours.supernet.state_dict())
    ref.load_state_dict(ours.state_dict())
    data = batches(6)
    for k, group in enumerate((data[:3], data[3:])):
        ours.on_epoch_start(k, 4)
        ref.on_epoch_start(k, 4)
        ours.step_group(group)
        reference_tse_group(ref, [t for t, _ in group])
    for x, y in zip([*ours.supernet.state_dict().values(), *ours.arch_parameters()],
                    [*ref.supernet.state_dict().values(), *ref.arch_parameters()]):
        assert torch.equal(x, y)
    assert ours.w_opt.state_dict()["state"].keys() == ref.w_opt.state_dict()["state"].keys()
    for s, r in zip(ours.w_opt.state_dict()["state"].values(), ref.w_opt.state_dict()["state"].values()):
        assert torch.equal(s["momentum_buffer"], r["momentum_buffer"])


def test_sp_step_is_host_choice_then_device_step():
    """The Bernoulli draw and the temperature happen on the host before the device step, which reads the
    temperature from a device scalar (so one captured step serves both temperatures)."""
    _, _, m = tiny_method(["method=sp_darts", "method.t_sp=0.01", "method.sm_factor=11"])
    m.on_epoch_start(5, 10)
    m.p = 1.0
    seen = []
    original = m.device_step
    m.device_step = lambda t, v: (seen.append(float(m._temperature)), original(t, v))[1]
    m.step(*batches(1)[0])
    m.p = 0.0
    m.step(*batches(1)[0])
    assert seen == pytest.approx([0.01, 0.11])
