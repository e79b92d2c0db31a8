"""The CUDA-graph logic proven on the CPU (perf.md §5, issue 21): :class:`~nasrun.graph_emulation.EmulatedBackend`
records a captured step op by op and replays it as a CUDA graph would (Python values frozen, state created in the
capture re-created at every replay), so every graph-enabled method must follow its eager trajectory bitwise.

On the code before issue 21 (no warm-up after a key change, no identity check, no self-check) this emulation shows
the Adam-state bug: DARTS on NB201 with ``arch_start_epoch=1`` re-captured its step when α steps began, the capture
ran Adam's first step (``exp_avg = zeros``), and every replay re-zeroed the moments; α and the weights ended 0.23
relative away from the eager run after 3 tiny epochs (:func:`test_old_logic_replays_adam_state_creation` keeps that
logic reachable as a regression check of the emulation itself).
"""

import json
import os
import signal

import pytest
import torch

import nasrun.engine as engine
from nasrun.errors import Interrupted
from nasrun.graph_emulation import CaptureRefused, EmulatedBackend
from nasrun.graphs import GraphSet, GraphState, StepGraph, graphs_wanted, set_capturable
from nasrun.search import run_search

from .conftest import make_cfg
from .test_graphs import batches


class Toy:
    """A conv net with BN statistics, SGD with momentum and a step the tests vary."""

    def __init__(self, opt="sgd"):
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 4))
        self.opt = (torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9) if opt == "sgd" else
                    torch.optim.Adam(self.net.parameters(), lr=0.01, capturable=True))
        self.scale = 1.0  # a Python value the step reads
        self.extra = torch.zeros(())

    def state(self):
        return GraphState([self.net], [self.opt], [self.extra])

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(self.net(x) * self.scale, y)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def params(self):
        return [t.detach().clone() for t in self.net.state_dict().values()]


def toy_run(backend, step=None, calls=8, key=lambda: None, between=None, opt="sgd", verify=True, batch_sizes=None):
    toy = Toy(opt)
    graphs = GraphSet(backend, toy.state, verify)
    losses = []
    for i, ((x, y), _) in enumerate(batches(calls)):
        if batch_sizes:
            x, y = x[:batch_sizes[i]], y[:batch_sizes[i]]
        if between:
            between(toy, i)
        losses.append(graphs.run("s", step or toy.step, key, x, y)["loss"].clone())
    return toy, graphs, losses


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_replay_follows_eager_bitwise_across_partial_batches():
    sizes = [8, 8, 8, 8, 5, 8, 8, 8]  # a partial batch after the capture runs eagerly, the graph stays
    eager, _, l1 = toy_run(None, batch_sizes=sizes)
    toy, graphs, l2 = toy_run(EmulatedBackend(), batch_sizes=sizes)
    g = graphs.graphs["s"]
    assert g.captures == 1 and g.verified == 1 and g.failed is None and graphs.disabled is None
    assert same(eager.params(), toy.params()) and same(l1, l2)


def test_python_value_outside_the_key_is_frozen_and_inside_it_recaptures():
    """A CUDA graph bakes Python numbers in: the emulation replays the captured one, so a value changed between
    calls but missing from the key shows up as a different trajectory; in the key it re-captures."""
    def change(toy, i):
        toy.scale = 1.0 if i < 5 else 0.5

    eager, _, _ = toy_run(None, between=change)
    stale, _, _ = toy_run(EmulatedBackend(), between=change, verify=False)
    assert not same(eager.params(), stale.params())
    state = {}
    keyed, graphs, _ = toy_run(EmulatedBackend(), between=lambda t, i: (change(t, i), state.update(t=t)),
                               key=lambda: state["t"].scale)
    assert same(eager.params(), keyed.params()) and graphs.graphs["s"].captures == 2


def test_old_logic_replays_adam_state_creation(monkeypatch):
    """The pre-issue-21 logic (capture right after a key change, no identity check, no self-check): a step that begins
    an Adam step at call 5 captures Adam's first step, whose zero-filled moments every replay re-creates."""
    def run(graphs_on, old):
        toy = Toy()
        alpha = torch.nn.Parameter(torch.randn(3, generator=torch.Generator().manual_seed(1)))
        adam = torch.optim.Adam([alpha], lr=0.1, capturable=True)
        arch = {"on": False}

        def step(x, y):
            out = toy.step(x, y)
            if arch["on"]:
                adam.zero_grad(set_to_none=True)
                ((alpha * x.mean()).sum() ** 2 + alpha.pow(2).sum()).backward()
                adam.step()
            return out

        graphs = GraphSet(EmulatedBackend() if graphs_on else None, lambda: GraphState([toy.net], [toy.opt, adam], [alpha]),
                          verify=not old)
        for i, ((x, y), _) in enumerate(batches(10)):
            arch["on"] = i >= 5
            if old and "s" in graphs.graphs:
                graphs.graphs["s"].rewarm = 0
            graphs.run("s", step, lambda: arch["on"], x, y)
        return alpha.detach().clone()

    eager = run(False, False)
    assert torch.equal(run(True, False), eager)  # re-warmed after the key change: Adam's state made eagerly
    monkeypatch.setattr(GraphState, "identity", lambda self: None)  # the old code had no identity check
    monkeypatch.setattr(StepGraph, "_stray_writes", staticmethod(lambda *a: None))
    assert not torch.equal(run(True, True), eager)  # the bug, made visible on the CPU


def test_state_created_inside_a_capture_is_dropped_and_made_eagerly():
    """With warm-up off, the first capture would create SGD's momentum buffers: the identity check sees it, forgets
    them, warms up once and captures again."""
    toy = Toy()
    graphs = GraphSet(EmulatedBackend(), toy.state)
    eager = Toy()
    for (x, y), _ in batches(6):
        graphs.graphs.setdefault("s", StepGraph(toy.step, name="s", owner=graphs, warmup=0, rewarm=0))
        graphs.run("s", toy.step, lambda: None, x, y)
        eager.step(x, y)
    g = graphs.graphs["s"]
    assert g.recaptured_after_state == 1 and g.captures == 1 and g.failed is None
    assert same(eager.params(), toy.params())


@pytest.mark.parametrize("body, refused", [
    (lambda t: t.sum().item(), "Tensor.item"),
    (lambda t: t.sum().tolist(), "Tensor.tolist"),
    (lambda t: bool(t.sum() > 0), "Tensor.__bool__"),
    (lambda t: t.cpu(), "Tensor.cpu"),
    (lambda t: t.nonzero(), "nonzero"),
    (lambda t: t[t > 0], "index"),
    (lambda t: t + torch.tensor([1.0, 2.0, 3.0, 4.0]), "lift_fresh"),
    (lambda t: t + torch.rand(t.shape, generator=torch.Generator().manual_seed(0)), "generator other than the default"),
])
def test_what_a_capture_cannot_hold_is_refused_and_the_step_runs_eagerly(body, refused, capsys):
    def step(x, y):
        body(x.flatten(1)[:, :4])
        return {"loss": x.sum()}

    backend = EmulatedBackend()
    graphs = GraphSet(backend, GraphState)
    for (x, y), _ in batches(5):
        out = graphs.run("s", step, lambda: None, x, y)
        assert torch.equal(out["loss"], x.sum())
    assert graphs.disabled and refused in graphs.disabled and not graphs.enabled
    assert "running" in capsys.readouterr().err


def test_random_draws_on_the_default_generator_replay_like_eager():
    def run(backend):
        torch.manual_seed(3)
        toy = Toy()

        def step(x, y):
            return toy.step(torch.nn.functional.dropout(x, 0.3), y)

        graphs = GraphSet(backend, toy.state)
        for (x, y), _ in batches(8):
            graphs.run("s", step, lambda: None, x, y)
        return toy.params()

    assert same(run(None), run(EmulatedBackend()))


def test_self_check_fires_on_a_step_whose_replay_differs():
    """A step that counts its calls in Python (baked into the capture) passes every other check; two replays ≠ two
    eager steps, so the self-check warns, names the tensor, and the graph runs eagerly: the run stays exact."""
    count = {"n": 0}

    def run(backend):
        toy = Toy()
        count["n"] = 0

        def step(x, y):
            count["n"] += 1
            toy.extra.add_(count["n"])
            return toy.step(x, y)

        graphs = GraphSet(backend, toy.state)
        for (x, y), _ in batches(8):
            graphs.run("s", step, lambda: None, x, y)
        return toy, graphs

    eager, _ = run(None)
    toy, graphs = run(EmulatedBackend())
    g = graphs.graphs["s"]
    assert g.failed and "tensor0" in g.failed and g.verified == 1
    assert same(eager.params(), toy.params())  # (the check's own calls advanced the Python counter: extra differs)


def test_failed_capture_leaves_nothing_behind():
    """An exception inside the capture: the optimiser state the capture created is forgotten, Adam is made
    non-capturable, every graph of the set runs eagerly, and the run goes on (said once)."""
    backend = EmulatedBackend(fail_capture=RuntimeError("injected"))
    toy = Toy("adam")
    graphs = GraphSet(backend, toy.state)
    ref = Toy("adam")
    for i, ((x, y), _) in enumerate(batches(6)):
        graphs.run("s", toy.step, lambda: None, x, y)
        if i == 3:  # the capture (after three warm-up calls) failed: from here on non-capturable
            set_capturable(ref.opt, False)
        ref.step(x, y)
    assert graphs.disabled and "injected" in graphs.disabled and not graphs.enabled
    assert toy.opt.param_groups[0]["capturable"] is False
    assert all(s["step"].device.type == "cpu" for s in toy.opt.state.values())
    assert same(ref.params(), toy.params())


def test_undeclared_persistent_write_is_refused():
    toy = Toy()
    hidden = torch.zeros(3)

    def step(x, y):
        hidden.add_(1.0)
        return toy.step(x, y)

    graphs = GraphSet(EmulatedBackend(), toy.state)
    for (x, y), _ in batches(5):
        graphs.run("s", step, lambda: None, x, y)
    assert graphs.disabled and "does not declare" in graphs.disabled


def test_emulate_setting():
    assert isinstance(graphs_wanted("emulate", torch.device("cpu")), EmulatedBackend)
    assert graphs_wanted("false", torch.device("cpu")) is None
    with pytest.raises(CaptureRefused):
        EmulatedBackend().capture(lambda t: t.item(), (torch.ones(()),))


# --- every graph-enabled method, through run_search: emulated graphs vs the same run never captured ----------------
PARTIAL = ["dataset.synthetic.n_train=102", "trainer.batch_size=8", "trainer.epochs=3"]  # 6 full batches + 3
CASES = {
    "darts": ["method.arch_start_epoch=1"],  # α steps begin at epoch 1: a re-capture on a new code path
    "darts_2nd": [],
    "tse_darts": ["method.inner_steps=2"],
    "amended_darts": [],
    "sp_darts": ["method.late_epoch=2", "method.late_t_sp=0.01", "method.monitor_factor=0.1",  # constant lr
                 "method.grad_clip_scope=alpha_stale"],  # its NB201 presets clip as AutoDL
    "ex_darts": [],
    "fixed_alpha": [],
    "sdarts_rs": [],
    "sdarts_adv": [],
    "rsps": [],
    "sgas": ["method.warmup_dec_epoch=0", "method.decision_freq=1"],  # a decision every epoch
    "snas": [],
    "gaea": [],
    "darts+stages": ["method=darts", "space.partial_channels=2", "method.stage_epochs=[1,2]",
                     "method.stage_partial_channels=[2,1]", "method.stage_keep=[5,3]"],  # prune + widen at epoch 1
    "darts+pt": ["method=darts", "selector=pt", "selector.proj_intv=1", "selector.max_valid_batches=2"],
    "nb1shot1": ["method=darts", "space=nb1shot1_s1"],
    "drnas": ["method.reg_type=kl", "method.grad_clip_scope=alpha"],  # Dirichlet draws inside the step; α in the clip
    "darts+stale": ["method=darts", "method.grad_clip_scope=alpha_stale", "method.grad_clip=0.05"],  # AutoDL's clip
    "tse_darts+dirichlet": ["method=tse_darts", "method.relaxation=dirichlet", "method.inner_steps=2"],  # TSE-DrNAS
    "drnas+progressive": ["method=drnas", "space.partial_channels=2", "method.stage_epochs=[1,2]",
                          "method.stage_partial_channels=[2,1]", "method.stage_keep=[5,3]"],
}
CONSTANT = {"ex_darts"}  # a constant learning rate and nothing else that changes: one capture serves the run
SLOW_CASES = {
    "pc_darts": ["space=darts", "method.arch_start_epoch=1"],
    "pdarts": ["space=darts", "method.w_lr_min=0.025", "space.skip_dropout=0.5", "space.skip_dropout_warmup=2"],
    "snas+resource": ["method=snas", "space=darts", "method.resource=reparametrization", "method.resource_log=true"],
    "darts_space": ["method=darts", "space=darts", "method.arch_start_epoch=1", "space.search_drop_path=0.3"],
    "gaea_pc": ["method=gaea", "space=darts", "method.learn_edges=true", "space.partial_channels=2"],
}


@pytest.fixture
def emulated(monkeypatch):
    """Every emulated backend and method a run makes, to read their graphs afterwards."""
    from nasrun.methods.base import Method

    made = []
    original = Method.use_cuda_graphs

    def use(self, backend, verify=True):
        original(self, backend, verify)
        made.append(self)

    monkeypatch.setattr(Method, "use_cuda_graphs", use)
    return made


def never_capture(monkeypatch):
    """The eager twin: the same code (capturable Adam, warm-up calls) without ever capturing."""
    monkeypatch.setattr(StepGraph, "WARMUP", 10 ** 9)
    monkeypatch.setattr(StepGraph, "REWARM", 10 ** 9)


def flat(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from flat(v, f"{prefix}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, x


def compare_runs(a, b):
    """Checkpointed supernet and method state bitwise equal, and the same per-epoch records (minus timings)."""
    ca, cb = (torch.load(d / "checkpoint.pt", weights_only=False) for d in (a, b))
    fa, fb = dict(flat({k: ca[k] for k in ("supernet", "method")})), dict(flat({k: cb[k] for k in ("supernet", "method")}))
    assert fa.keys() == fb.keys()
    bad = [k for k in fa if torch.is_tensor(fa[k]) and not torch.equal(fa[k], fb[k])]
    assert not bad, bad[:5]
    drop = ("seconds", "images_per_s", "epoch_end_seconds", "overhead_seconds", "graph_capture_seconds",
            "graph_verify_seconds")
    ma, mb = ([{k: v for k, v in json.loads(x).items() if k not in drop} for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (a, b))
    assert ma == mb
    assert json.loads((a / "genotype.json").read_text())["genotype"] == json.loads((b / "genotype.json").read_text())["genotype"]


def graphs_of(method):
    return {k: (g.captures, g.failed) for k, g in method.graphs.graphs.items()}


def check_method(case, extra, tmp_path, monkeypatch, emulated):
    overrides = [f"method={case.split('+')[0]}", *PARTIAL, "trainer.cuda_graphs=emulate", *extra]
    run_search(make_cfg(overrides), tmp_path / "graphs")
    method = emulated[-1]
    assert method.graphs.enabled and method.graphs.disabled is None, method.graphs.disabled
    assert sum(g.captures for g in method.graphs.graphs.values()) >= (1 if case in CONSTANT else 2), graphs_of(method)
    assert not any(g.failed for g in method.graphs.graphs.values()), graphs_of(method)
    with monkeypatch.context() as m:
        never_capture(m)
        run_search(make_cfg(overrides), tmp_path / "eager")
    assert sum(g.captures for g in emulated[-1].graphs.graphs.values()) == 0
    compare_runs(tmp_path / "graphs", tmp_path / "eager")


@pytest.mark.parametrize("case", list(CASES))
def test_graph_enabled_method_follows_its_eager_trajectory(case, tmp_path, monkeypatch, emulated):
    check_method(case, CASES[case], tmp_path, monkeypatch, emulated)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(SLOW_CASES))
def test_graph_enabled_method_follows_its_eager_trajectory_darts_space(case, tmp_path, monkeypatch, emulated):
    check_method(case, SLOW_CASES[case], tmp_path, monkeypatch, emulated)


def test_emulated_run_interrupted_and_resumed_equals_a_straight_eager_run(tmp_path, monkeypatch, emulated):
    """A checkpoint taken mid-epoch on the graph path resumes (graphs captured afresh) to the bits of the eager run."""
    overrides = ["method=darts", *PARTIAL, "trainer.cuda_graphs=emulate", "method.arch_start_epoch=1"]
    with monkeypatch.context() as m:
        never_capture(m)
        run_search(make_cfg(overrides), tmp_path / "eager")
    calls, original = {"n": 0}, engine.accumulate

    def signal_at(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 10:  # epoch 1, step 3: after the re-capture for α steps
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(engine, "accumulate", signal_at)
    with pytest.raises(Interrupted):
        run_search(make_cfg(overrides), tmp_path / "resumed")
    monkeypatch.setattr(engine, "accumulate", original)
    run_search(make_cfg(overrides), tmp_path / "resumed")
    assert sum(g.captures for g in emulated[-1].graphs.graphs.values()) >= 1
    compare_runs(tmp_path / "eager", tmp_path / "resumed")


def test_retrain_step_emulated_equals_eager(monkeypatch):
    """The retraining step (drop-path on the default generator, auxiliary head, lr and drop-path per epoch)."""
    import contextlib

    from nasrun.retrain import Protocol, Retrainer
    from nasrun.spaces import get_space

    out = []
    for graphs in (False, True):
        torch.manual_seed(0)
        net = get_space("darts").build_network("DARTS_V2", 4, C=4, layers=3, auxiliary=True)
        p = Protocol("t", 4, 3, True, 0.4, 0.2, 0, 10, 8, 0.025, 0.0, "cosine", 0.97, 1, 0.9, 3e-4, 5.0, 0.0)
        tr = Retrainer(net, p, contextlib.nullcontext, cuda_graphs=EmulatedBackend())
        tr.graphs.enabled = graphs
        torch.manual_seed(1)
        for epoch, half in ((3, batches(6, size=32)), (4, batches(6, size=32, seed=1))):
            tr.on_epoch_start(epoch)
            for t, _ in half:
                tr.step(t)
        if graphs:
            assert tr.graphs.graphs["retrain_step"].captures == 2 and tr.graphs.disabled is None
        out.append([v.clone() for v in net.state_dict().values()])
    assert same(*out)


@pytest.mark.parametrize("graphs", [False, True])
def test_retrain_evaluation_counts_top1_and_top5_as_a_direct_count(graphs):
    """The test-set loss, top-1 and top-5 accuracy of a retrained network (the ImageNet tables' two error columns),
    over uneven batches, eager and replayed, against one forward pass over the whole set and a sort."""
    import contextlib

    from nasrun.retrain import Protocol, Retrainer
    from nasrun.spaces import get_space

    torch.manual_seed(0)
    net = get_space("darts").build_network("DARTS_V2", 12, C=4, layers=3, auxiliary=True)
    p = Protocol("t", 4, 3, True, 0.4, 0.0, 0, 10, 8, 0.025, 0.0, "cosine", 0.97, 1, 0.9, 3e-4, 5.0, 0.0)
    tr = Retrainer(net, p, contextlib.nullcontext, cuda_graphs=EmulatedBackend())
    tr.graphs.enabled = graphs
    x, y = torch.randn(50, 3, 16, 16), torch.randint(0, 12, (50,))
    loss, top1, top5 = tr.evaluate_batches((x[i:i + 16], y[i:i + 16]) for i in range(0, 50, 16))
    net.eval()
    with torch.no_grad():
        logits = net(x)[0].double()
    ranks = (logits > logits.gather(1, y[:, None])).sum(1)  # classes scored above the true one
    assert loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert top1 == pytest.approx(100.0 * (ranks == 0).double().mean().item())
    assert top5 == pytest.approx(100.0 * (ranks < 5).double().mean().item())
    assert top1 < top5 < 100.0
