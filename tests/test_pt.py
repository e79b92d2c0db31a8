"""DARTS-PT projection (methods.md §5.2): schedules and decisions on a hand-built decisive supernet."""

import json

import pytest
import torch
from torch import nn

from nasrun.config import build
from nasrun.data import Augment, SearchStream
from nasrun.graphs import GraphSet
from nasrun.search import run_search
from nasrun.selectors.pt import PerturbationSelector, pt_schedule
from nasrun.spaces import get_space

from .conftest import make_cfg


def test_reference_schedules():
    tune, events = pt_schedule(6, 0, 5, "nb201")
    assert tune == 25 and events == [(0, "op"), (5, "op"), (10, "op"), (15, "op"), (20, "op"), (24, "op")]
    tune, events = pt_schedule(14, 3, 5, "darts")
    assert tune == 81 and len(events) == 17
    assert [e for e, k in events if k == "op"] == list(range(0, 70, 5))
    assert [e for e, k in events if k == "topology"] == [70, 75, 80]


class Decisive(nn.Module):
    """Sample i depends on one decisive (cell, edge, op) weight, chosen by a pixel: its correct-class
    logit is 10·w[e, o] and the others are 0. Masking that op (or its edge) makes the sample wrong
    (ties go to class 0) and raises its loss; masking anything else changes nothing."""

    def __init__(self, items, n_classes=4):
        super().__init__()
        self.items, self.n = items, n_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x, weights):
        label = torch.round(x[:, 0, 0, 0] * 255 / 10).long()
        which = torch.round(x[:, 0, 0, 1] * 255 / 10).long() % len(self.items)
        vals = torch.stack([weights[k][e, o] for k, e, o in self.items])
        logits = torch.zeros(len(x), self.n, dtype=x.dtype) + 0 * self.dummy
        return logits.scatter(1, label[:, None], 10 * vals[which][:, None])


class FakeMethod:
    op_mask = None  # the method seam's pruned-op mask (none pruned)

    def __init__(self, space, supernet):
        self.space, self.supernet = space, supernet
        self.alphas = {k: torch.zeros(*s) for k, s in space.alpha_shapes().items()}

    def edge_weights(self, alphas=None):
        return {k: torch.softmax(a, -1) for k, a in (alphas or self.alphas).items()}

    def loss(self, x, y, weights):
        logits = self.supernet(x, weights)
        return torch.nn.functional.cross_entropy(logits, y), logits

    def step(self, train, valid):
        return {}

    graphs = GraphSet(False)  # the method interface's CUDA-graph runner (off on the CPU)

    def reset_graphs(self):
        """Nothing is captured on the CPU, so there is nothing to forget."""


def decisive_stream(n_items, n=400):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(1, 4, (n,), generator=g)
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = (y * 10).to(torch.uint8)
    x[:, 0, 0, 1] = (torch.arange(n) % n_items * 10).to(torch.uint8)
    aug = Augment([0.0] * 3, [1.0] * 3, crop_pad=0, flip=False)
    return SearchStream(x, y, torch.arange(n // 2), torch.arange(n // 2, n), 16, aug, "darts", 0, torch.device("cpu"))


@pytest.mark.parametrize("criterion", ["acc", "loss"])
def test_pt_picks_the_decisive_op_on_every_nb201_edge(criterion):
    space = get_space("nb201", C=4, N=1)
    choice = [3, 1, 4, 0, 2, 3]
    items = [("normal", e, o) for e, o in enumerate(choice)]
    method = FakeMethod(space, Decisive(items))
    sel = PerturbationSelector(criterion=criterion, proj_intv=1)
    torch.manual_seed(0)
    ((_, g),) = sel.select(space, method, [], decisive_stream(len(items)))
    assert [space.ops.index(op) for op, _ in (pair for node in g.nodes for pair in node)] == choice
    assert sorted(d["edge"] for d in sel.decisions) == list(range(6))


def test_pt_topology_keeps_the_decisive_edges_in_the_darts_space():
    space = get_space("darts_7op", C=4, layers=3)
    true_edges = {0: (0, 1), 1: (2, 4), 2: (5, 8), 3: (10, 13)}
    items = [(k, e, 3) for k in ("normal", "reduce") for pair in true_edges.values() for e in pair]  # sep_conv_3x3
    method = FakeMethod(space, Decisive(items))
    sel = PerturbationSelector(proj_intv=1)
    torch.manual_seed(0)
    ((_, g),) = sel.select(space, method, [], decisive_stream(len(items)))
    for cell in (g.normal, g.reduce):
        for node, pair in true_edges.items():
            kept = sorted(space.edges[e][1] for e in pair)
            assert sorted(j for _, j in cell[2 * node:2 * node + 2]) == kept
            assert all(op == "sep_conv_3x3" for op, _ in cell[2 * node:2 * node + 2])
    assert [d["kind"] for d in sel.decisions].count("topology") == 6  # 3 nodes × 2 cell types


def test_pt_end_to_end_on_a_fixed_alpha_supernet(tmp_path):
    cfg = make_cfg(["method=fixed_alpha", "selector=pt", "selector.proj_intv=1", "selector.max_valid_batches=1",
                    "trainer.epochs=1"])
    summary = run_search(cfg, tmp_path)
    decisions = json.loads((tmp_path / "selection.json").read_text())["decisions"]
    assert len(decisions) == 6 and decisions[-1]["genotype"] == summary["genotype"]
    assert summary["selector"] == "pt"
    assert build(make_cfg(["selector=pt"]).selector).criterion == "acc"


def id_stream(pairing="darts", flip=True, train_draw="epoch", n=200):
    """Image i carries its id in channel 1 (flip-invariant) and a left-to-right ramp in channel 0 (a flip reverses it)."""
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 1] = torch.arange(n, dtype=torch.uint8)[:, None, None]
    x[:, 0] = torch.tensor([0, 10, 20, 30], dtype=torch.uint8)
    y = torch.arange(n) % 4
    aug = Augment([0.0] * 3, [1.0] * 3, crop_pad=0, flip=flip)
    return SearchStream(x, y, torch.arange(n // 2), torch.arange(n // 2, n), 16, aug, pairing, 0, torch.device("cpu"),
                        train_draw)


def ids(x):
    return torch.round(x[:, 1, 0, 0] * 255).long()


def flipped(x):
    return x[:, 0, 0, 0] > x[:, 0, 0, 3]


class Recorder(FakeMethod):
    def __init__(self, space, supernet):
        super().__init__(space, supernet)
        self.scored, self.steps, self.lrs = [], [], []

    def loss(self, x, y, weights):
        self.scored.append(x)
        return super().loss(x, y, weights)

    def step(self, train, valid):
        self.steps.append((ids(train[0]), ids(valid[0])))
        self.lrs.append(self.w_opt.param_groups[0]["lr"])
        return {}


def test_pt_scores_on_the_augmented_valid_split_in_random_order():
    """darts-pt's valid_queue: a SubsetRandomSampler over images with the train transform, a new order per pass."""
    space = get_space("nb201", C=4, N=1)
    stream = id_stream()
    passes = {}
    for augment in (True, False):
        method = Recorder(space, Decisive([("normal", 0, 0)]))
        sel = PerturbationSelector(augment_valid=augment)
        sel._gen.manual_seed(0)
        for _ in range(2):
            method.scored = []
            sel.evaluate(method, stream, method.edge_weights())
            passes.setdefault(augment, []).append(torch.cat(method.scored))
    valid = list(range(100, 200))
    for x in passes[True]:
        assert sorted(ids(x).tolist()) == valid and ids(x).tolist() != valid  # every image once, shuffled
        assert 30 < flipped(x).sum() < 70  # the train transform's random flip
    assert ids(passes[True][0]).tolist() != ids(passes[True][1]).tolist()  # a new order each pass
    for x in passes[False]:
        assert ids(x).tolist() == valid and not flipped(x).any()


@pytest.mark.parametrize("pairing, train_draw", [("nb201", "epoch"), ("darts", "fresh")])
def test_pt_tunes_on_a_train_permutation_with_fresh_valid_batches(pairing, train_draw):
    """darts-pt's tuning loop: ``for step, (x, y) in enumerate(train_queue)`` with ``next(iter(valid_queue))``,
    whatever the search's own draws were; the lr stays at 0.0025 (its scheduler is never stepped)."""
    space = get_space("nb201", C=4, N=1)
    method = Recorder(space, Decisive([("normal", 0, 0)]))
    stream = id_stream(pairing, train_draw=train_draw)
    sel = build(make_cfg(["+experiment=darts_pt_darts"], tiny=False).selector)
    sel.max_valid_batches = 1
    torch.manual_seed(0)
    sel.select(space, method, [], stream)
    assert len(method.steps) == 24 * 7 and set(method.lrs) == {0.0025}  # 24 tuning epochs of ⌈100/16⌉ steps
    for epoch in range(24):
        steps = method.steps[7 * epoch:7 * epoch + 7]
        assert sorted(torch.cat([t for t, _ in steps]).tolist()) == list(range(100))
        for _, v in steps:
            assert len(v) == 16 and len(set(v.tolist())) == 16 and v.min() >= 100


@pytest.mark.parametrize("where", ["projection", "tuning"])
def test_pt_is_checkpointed_and_resumes_mid_phase_bit_identically(tmp_path, monkeypatch, where):
    """Issue 15 item 2: a SIGUSR1 during a projection or a tuning step writes DARTS-PT's progress next to the trained
    state and exits (Interrupted, exit code 3); the same command resumes inside PT (no training, no projection
    redone) and ends with the decisions, genotype and checkpoint of a straight run."""
    import os
    import signal

    import torch

    from nasrun.errors import Interrupted
    from nasrun.methods.darts import Darts
    from nasrun.selectors.pt import PerturbationSelector

    cfg = make_cfg(["selector=pt", "selector.proj_intv=1", "selector.max_valid_batches=1", "trainer.epochs=1",
                    "dataset.synthetic.n_train=64"])
    run_search(cfg, tmp_path / "straight")
    calls = {"proj": 0, "tune": 0, "in_pt": False, "fire": True}
    project, step = PerturbationSelector._project_op, Darts.step

    def counted_project(self, *args):
        calls["in_pt"] = True
        calls["proj"] += 1
        if where == "projection" and calls["proj"] == 3 and calls["fire"]:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled once this projection is complete
        return project(self, *args)

    def counted_step(self, *args):
        if calls["in_pt"]:
            calls["tune"] += 1
            if where == "tuning" and calls["tune"] == 2 and calls["fire"]:
                os.kill(os.getpid(), signal.SIGUSR1)
        return step(self, *args)

    monkeypatch.setattr(PerturbationSelector, "_project_op", counted_project)
    monkeypatch.setattr(Darts, "step", counted_step)
    with pytest.raises(Interrupted, match="DARTS-PT's progress"):
        run_search(cfg, tmp_path / "resumed")
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert ckpt["trained"] and not ckpt["finished"] and tuple(ckpt["selection"]["position"]) != (0, 0, 0)
    done = len(ckpt["selection"]["decisions"])
    calls.update(proj=0, tune=0, in_pt=False, fire=False)
    run_search(cfg, tmp_path / "resumed")
    assert calls["proj"] == 6 - done  # the projections done before the signal are not redone
    for name in ("genotype.json", "selection.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("straight", "resumed"))
        assert a == b, name
    states = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("straight", "resumed")]
    for k, v in states[0]["supernet"].items():
        assert torch.equal(v, states[1]["supernet"][k]), k
    assert states[1]["finished"] and states[1]["selection"] is None
