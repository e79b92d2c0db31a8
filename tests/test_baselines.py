"""Baselines of the seed papers' tables (issue 14): each method's defining computation against an independent one."""

import math

import pytest
import torch
import torch.nn.functional as F

from nasrun.errors import UserError
from nasrun.methods.sdarts import clip_simplex

from .conftest import make_cfg, tiny_method


def batch(seed, dtype=torch.float64, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


def test_drnas_pathwise_gradient_is_the_gradient_of_the_expected_loss():
    """The α gradient through the reparameterised Dir(ELU(α)+1) samples, averaged over many samples, equals the
    gradient of the closed-form expectation of a nonlinear loss, L(w) = (c·w)²:
    E[w_i w_j] = β_iβ_j / (β₀(β₀+1)) for i ≠ j and β_i(β_i+1) / (β₀(β₀+1)) on the diagonal."""
    _, _, m = tiny_method(["method=drnas"], dtype=torch.float64)
    alpha = m.alphas["normal"].detach()[:2].clone().requires_grad_()  # two edges, five ops
    c = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    n = 200_000
    torch.manual_seed(0)
    w = m.edge_weights({"normal": alpha.expand(n, *alpha.shape)})["normal"]
    (mc,) = torch.autograd.grad(((w @ c) ** 2).mean(0).sum(), alpha)

    def expected(a):
        beta = F.elu(a) + 1
        b0 = beta.sum(-1, keepdim=True)
        second = beta[:, :, None] * beta[:, None, :] + torch.diag_embed(beta)  # β_iβ_j + δ_ij β_i
        return torch.einsum("i,eij,j->e", c, second / (b0 * (b0 + 1))[..., None], c).sum()

    (exact,) = torch.autograd.grad(expected(alpha), alpha)
    assert torch.allclose(mc, exact, rtol=0.05, atol=0.02 * exact.abs().max().item()), (mc, exact)
    assert mc.abs().sum() > 0


def test_drnas_anchor_regulariser():
    """kl: reg_scale·KL(Dir(β)‖Dir(1)) by the closed form lnΓ(Σβ) − Σ lnΓ(β_i) − lnΓ(K) + Σ (β_i − 1)(ψ(β_i) − ψ(Σβ));
    l2: the same reg_scale as Adam's weight decay on α, and no KL term."""
    _, _, kl = tiny_method(["method=drnas", "method.reg_type=kl", "method.reg_scale=0.01"], dtype=torch.float64)
    beta = F.elu(kl.alphas["normal"].detach()) + 1
    s, k = beta.sum(-1), beta.shape[-1]
    closed = (torch.lgamma(s) - torch.lgamma(beta).sum(-1) - math.lgamma(k)
              + ((beta - 1) * (torch.digamma(beta) - torch.digamma(s)[:, None])).sum(-1)).sum()
    assert kl.kl_reg().item() == pytest.approx(0.01 * closed.item(), rel=1e-10)
    from nasrun.config import build

    from .conftest import make_cfg

    cfg = make_cfg(["method=drnas"])
    space = build(cfg.space)
    l2 = build(cfg.method, supernet=space.build_supernet(4), space=space)
    assert l2.arch_opt.param_groups[0]["weight_decay"] == 1e-3 and l2.reg_type == "l2"
    w = l2.edge_weights()["normal"]
    assert torch.allclose(w.sum(-1), torch.ones(6)) and (w > 0).all()
    assert not torch.equal(w, l2.edge_weights()["normal"])  # a fresh sample every forward


def reference_clip(w):
    """SmoothDARTS model_search.clip, row by row as the reference loops."""
    w = w.clone()
    for line in w:
        max_index = line.argmax()
        line.clamp_(0, 1)
        if line.sum() == 0.0:
            line[max_index] = 1.0
        line.div_(line.sum())
    return w


def test_sdarts_clip_and_random_perturbation():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.6
        w[0] = -torch.rand(5, generator=g, dtype=torch.float64)  # a row that clamps to all zero
        assert torch.allclose(clip_simplex(w), reference_clip(w))
    _, _, m = tiny_method(["method=sdarts_rs"], dtype=torch.float64)
    m.on_epoch_start(25, 50)
    assert m.epsilon == pytest.approx(0.03 + 0.27 * 0.5)
    torch.manual_seed(1)
    m.prepare_step()
    torch.manual_seed(1)
    noise = (torch.rand(6, 5, dtype=m._noise["normal"].dtype) * 2 - 1).double()
    alpha = m.alphas["normal"].detach()
    w = m.perturb(batch(1))["normal"]
    expected = reference_clip(F.softmax(alpha, -1) + m.epsilon * noise)
    assert torch.allclose(w, expected) and (noise.abs() <= 1).all()


def test_sdarts_dead_row_gets_the_perturbed_rows_argmax():
    """Issue 23 item 1: where the perturbation pushes a whole row below zero, the reference's clip puts the one at
    the argmax of the *perturbed* row (op 2 here), not of softmax(α) (op 0); checked at the perturbation's call."""
    _, _, m = tiny_method(["method=sdarts_rs"], dtype=torch.float64)
    m.on_epoch_start(50, 50)  # ε = 0.3
    with torch.no_grad():
        for a in m.alphas.values():
            a.zero_()
            a[0, 0] = 0.1  # softmax row 0: op 0 largest
        noise = torch.full_like(m._noise["normal"], -1.0)
        noise[0, 2] = -0.9
        for buf in m._noise.values():
            buf.copy_(noise)
    w = m.perturb(batch(1))["normal"]
    alpha = m.alphas["normal"].detach()
    perturbed = F.softmax(alpha, -1) + m.epsilon * noise
    assert (perturbed[0] < 0).all() and perturbed[0].argmax() == 2 and F.softmax(alpha, -1)[0].argmax() == 0
    assert torch.equal(w[0], torch.tensor([0.0, 0, 1, 0, 0], dtype=torch.float64)[: w.shape[1]])
    assert torch.allclose(w, reference_clip(perturbed))


def test_sdarts_presets_follow_the_reference_schedule_and_space():
    """Issue 23 items 2-3: SmoothDARTS steps its CosineAnnealingLR before each epoch (epoch e at lr(e + 1)) and
    searches the 7-op DARTS space."""
    from nasrun.config import build

    for name in ("sdarts_rs", "sdarts_adv"):
        cfg = make_cfg([f"+experiment={name}_darts", "space.C=4", "space.layers=3"], tiny=False)
        assert cfg.space.name == "darts_7op" and "none" not in cfg.space.ops
        space = build(cfg.space)
        m = build(cfg.method, supernet=space.build_supernet(10), space=space)
        w = torch.zeros(1, requires_grad=True)
        ref = torch.optim.SGD([w], lr=cfg.method.w_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(ref, float(cfg.trainer.epochs), eta_min=cfg.method.w_lr_min)
        for epoch in range(cfg.trainer.epochs):
            ref.step()
            sched.step()  # the reference: scheduler.step() first, then the epoch
            m.on_epoch_start(epoch, cfg.trainer.epochs)
            assert m.w_opt.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12, abs=1e-15), epoch


def test_sdarts_adversarial_perturbation_raises_the_loss_within_the_ball():
    _, sup, m = tiny_method(["method=sdarts_adv"], dtype=torch.float64)
    m.on_epoch_start(49, 50)
    x, y = batch(2)
    base = {k: F.softmax(a.detach(), -1) for k, a in m.alphas.items()}
    raised = 0
    for seed in range(5):
        torch.manual_seed(seed)
        m.prepare_step()
        w = m.perturb((x, y))
        sup.eval()
        with torch.no_grad():
            before, after = m.loss(x, y, base)[0].item(), m.loss(x, y, w)[0].item()
        sup.train()
        assert after >= before - 1e-12  # never below the unperturbed point (the reference reverts then)
        raised += after > before
        for k in w:
            assert torch.allclose(w[k].sum(-1), torch.ones(len(w[k]), dtype=torch.float64)) and (w[k] >= 0).all()
            # each coordinate moved at most ε before renormalisation; after it, at most 2ε per row entry
            assert (w[k] - base[k]).abs().max() <= 2 * m.epsilon + 1e-12
    assert raised >= 3


@pytest.mark.parametrize("space_name", ["nb201", "darts", "darts_s1", "darts_fixed", "amended_deep"])
def test_uniform_architecture_samples_derive_to_themselves(space_name):
    """A sampled architecture's weights derive back to it: NB201 one op per edge; DARTS two distinct inputs per node,
    never `none`; and over many draws every op and every input pair of a node appears."""
    from nasrun.spaces import get_space

    space = get_space(space_name, **({"C": 4, "N": 1} if space_name == "nb201" else {"C": 4, "layers": 3}))
    g = torch.Generator().manual_seed(0)
    seen_ops, seen_pairs = set(), set()
    for _ in range(300):
        w = space.sample_architecture(g)
        genotype = space.derive(w)
        text = space.format_genotype(genotype)
        assert space.format_genotype(space.parse_genotype(text)) == text
        if space_name == "nb201":
            assert all(row.sum() == 1 for row in w["normal"])
            seen_ops |= {space.ops[int(i)] for i in w["normal"].argmax(-1)}
            continue
        for key, rows in w.items():
            for i in range(4):
                node = [e for e, (n, _) in enumerate(space.edges) if n == i]
                chosen = [e for e in node if rows[e].sum() == 1]
                assert len(chosen) == 2 and all(rows[e].sum() == 0 for e in node if e not in chosen)
                seen_pairs.add((key, i, tuple(chosen)))
                seen_ops |= {space.op_names(key)[e][int(rows[e].argmax())] for e in chosen}
    assert "none" not in seen_ops or space_name == "nb201"
    if space_name == "nb201":
        assert seen_ops == set(space.ops)
    elif space_name in ("darts", "darts_fixed"):
        assert seen_ops == set(space.ops) - {"none"}
        assert len({p for p in seen_pairs if p[0] == "normal" and p[1] == 3}) == (1 if space_name == "darts_fixed" else 10)


def test_rsps_trains_only_the_sampled_ops():
    """One RSPS w step on the per-op cells: the parameters of ops off the sampled path get no gradient."""
    from nasrun.spaces.fused import set_fused

    _, sup, m = tiny_method(["method=rsps"], dtype=torch.float64)
    set_fused(sup, False)
    torch.manual_seed(3)
    m.prepare_step()
    # a path without `none`, so every edge reaches the loss (a `none` downstream would cut its gradient)
    g = torch.Generator().manual_seed(3)
    chosen = torch.tensor([1, 2, 3, 4])[torch.randint(4, (6,), generator=g)]
    m._sampled["normal"].copy_(F.one_hot(chosen, 5))
    m.weight_step(batch(3))
    cell = next(c for c in sup.modules() if hasattr(c, "edges") and hasattr(c, "forward_reference"))
    for e, (name, edge) in enumerate(cell.edges.items()):
        for o, op in enumerate(edge):
            grads = [p.grad for p in op.parameters()]
            if not grads:
                continue
            moved = any(g is not None and g.abs().sum() > 0 for g in grads)
            assert moved == (o == int(chosen[e])), (name, o)


def test_random_ranking_keeps_the_best_sampled_architecture(tmp_path):
    """A search with rsps + random_ranking: selection.json lists every sampled architecture with its accuracy and
    the chosen genotype is the one with the highest."""
    import json

    from nasrun.search import run_search

    from .conftest import make_cfg

    summary = run_search(make_cfg(["method=rsps", "selector=random_ranking", "selector.samples=12",
                                   "selector.batch_size=16", "trainer.epochs=1"]), tmp_path)
    decisions = json.loads((tmp_path / "selection.json").read_text())["decisions"]
    assert len(decisions) == 12 and summary["selector"] == "random_ranking"
    best = max(decisions, key=lambda d: d["valid_acc"])  # first of equals, as the selector keeps it
    assert summary["genotype"] == best["genotype"]
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["valid_loss"] is None  # no α step


def test_gdas_edge_is_straight_through_with_scalar_terms():
    """mixed_hard: value = op_k(x) (the other ops never run); ∂Σout/∂w_o = numel(out) for o ≠ k (the broadcast
    scalars) and Σ op_k(x) for k."""
    from nasrun.spaces.ops import mixed_hard

    calls = []

    class Op(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            calls.append(self.scale)
            return self.scale * x

    ops = [Op(s) for s in (1.0, 2.0, 3.0)]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    probs = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    hard = F.one_hot(torch.tensor(1), 3).double() - probs.detach() + probs
    out = mixed_hard(ops, x, hard, 1)
    assert calls == [2.0] and torch.allclose(out, 2 * x)
    (g,) = torch.autograd.grad(out.sum(), probs)
    assert torch.allclose(g, torch.tensor([out.numel(), (2 * x).sum().item(), out.numel()], dtype=torch.float64))


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_gdas_cell_terms_equal_the_per_edge_straight_through(space, monkeypatch):
    """The hard path's w_k and Σ_{o≠k} w_o computed once per cell type (:meth:`HardPath.edge_terms`) give the value
    and the α and weight gradients of the per-edge formula of :func:`mixed_hard` (float64)."""
    from nasrun.spaces.ops import HardPath

    _, sup, m = tiny_method(["method=gdas", f"space={space}"], dtype=torch.float64)
    x, y = batch(4)
    out = []
    for per_edge in (False, True):
        with monkeypatch.context() as mp:
            if per_edge:  # the old per-edge arithmetic: a select and a sum for every edge of every cell
                mp.setattr(HardPath, "edge_terms",
                           lambda self: [(w, w[k], w.sum() - w[k]) for w, k in zip(self.weights, self.index)])
            torch.manual_seed(3)
            weights = m.edge_weights()
            loss = F.cross_entropy(sup(x, weights), y)
            out.append(torch.autograd.grad(loss, [*m.arch_parameters(), *sup.parameters()], allow_unused=True))
    pairs = [(a, b) for a, b in zip(*out) if a is not None or b is not None]
    assert pairs and all(a is not None and b is not None and torch.allclose(a, b, rtol=1e-12, atol=1e-14) for a, b in pairs)


def test_gdas_samples_by_gumbel_max_and_anneals_tau():
    """The sampled op follows softmax(α) (Gumbel-max, whatever τ); the hard path's value equals the per-op cell
    with one-hot weights; τ runs 10 → 0.1 linearly."""
    from nasrun.spaces.fused import set_fused

    _, sup, m = tiny_method(["method=gdas"], dtype=torch.float64)
    m.on_epoch_start(0, 50)
    assert m.tau == 10.0
    m.on_epoch_start(49, 50)
    assert m.tau == pytest.approx(0.1)
    alpha = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05]], dtype=torch.float64))
    torch.manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(4000):
        counts[m.sample(alpha).index[0]] += 1
    assert torch.allclose(counts / 4000, torch.tensor([0.5, 0.3, 0.1, 0.05, 0.05]), atol=0.025)
    set_fused(sup, False)
    x, _ = batch(4)
    torch.manual_seed(1)
    path = m.edge_weights()["normal"]
    onehot = F.one_hot(torch.tensor(path.index), 5).double()
    with torch.no_grad():
        assert torch.allclose(sup(x, {"normal": path}), sup(x, {"normal": onehot}), atol=1e-10)
    assert m.derive_weights()["normal"].argmax(-1).tolist() == m.alphas["normal"].argmax(-1).tolist()


def test_gdas_with_pt_is_refused_before_training(tmp_path):
    from nasrun.errors import UserError
    from nasrun.search import run_search

    from .conftest import make_cfg

    with pytest.raises(UserError, match="selector=pt edits the supernet's mixing weights, but method=gdas"):
        run_search(make_cfg(["method=gdas", "selector=pt"]), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_pc_darts_edge_normalisation_and_schedule():
    """w[e, o] = softmax(α_e)_o · softmax(β over the edges into e's node)_e, node by node; α/β frozen before epoch 15."""
    from .conftest import make_cfg

    from nasrun.config import build

    cfg = make_cfg(["space=darts", "method=pc_darts"])
    space = build(cfg.space)
    m = build(cfg.method, supernet=space.build_supernet(4), space=space)
    with torch.no_grad():
        for b in m.betas.values():
            b.normal_()
    w = m.edge_weights()["normal"]
    alpha, beta = m.alphas["normal"].detach(), m.betas["normal"].detach()
    start = 0
    for n_in in (2, 3, 4, 5):  # the DARTS cell's nodes take 2, 3, 4, 5 inputs in α-row order
        rows = slice(start, start + n_in)
        expected = F.softmax(alpha[rows], -1) * F.softmax(beta[rows], 0)[:, None]
        assert torch.allclose(w[rows], expected.float()), n_in
        assert w[rows].sum().item() == pytest.approx(1.0, abs=1e-6)  # the β̂ of a node sum to one
        start += n_in
    assert len(m.arch_parameters()) == 4 and any(p is m.betas["reduce"] for p in m.arch_parameters())
    m.on_epoch_start(14, 50)
    assert not m.train_arch
    m.on_epoch_start(15, 50)
    assert m.train_arch


def test_pc_darts_partial_channel_edge():
    """One edge of a K=4 cell equals shuffle(cat(Σ_o w_o·op_o(x[:, :C/4]), (Σ_o w_o)·x[:, C/4:])), with the shuffle
    written independently as an index map: output channel c reads input channel (c mod K)·C/K + c div K."""
    from nasrun.spaces import get_space

    space = get_space("darts", C=8, layers=3, partial_channels=4)
    sup = space.build_supernet(4).double()
    cell = sup.cells[0]
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    w = F.softmax(torch.randn(len(cell.ops[0]), dtype=torch.float64), 0) * 0.7
    with torch.no_grad():
        out = cell._edge(0, x, w)
        part = x[:, :2]
        mixed = sum(wo * op(part) for wo, op in zip(w, cell.ops[0]))
        joined = torch.cat([mixed, w.sum() * x[:, 2:]], dim=1)
        index = torch.tensor([(c % 4) * 2 + c // 4 for c in range(8)])
        assert torch.allclose(out, joined[:, index])
    red = sup.cells[1]  # a reduction cell: the bypass is max-pooled
    with torch.no_grad():
        y = red._edge(0, torch.randn(2, 16, 6, 6, dtype=torch.float64), w)
    assert y.shape == (2, 16, 3, 3)


@pytest.mark.parametrize("method, extra", [("pc_darts", ["method.arch_start_epoch=1"]), ("sdarts_adv", []),
                                           pytest.param("gaea", ["space=darts", "method.learn_edges=true",
                                                                 "method.single_level=true"], marks=pytest.mark.slow),
                                           ("drnas", []), ("gdas", []), ("rsps", []), ("snas", []),
                                           *[("drnas", ["space.partial_channels=4", f"method.stage_epochs={e}",
                                                        "method.stage_partial_channels=[4,2]", "method.stage_keep=[5,3]"])
                                             for e in ("[1,2]", "[2,1]")],  # interrupted after / before widening
                                           ("snas", ["method.resource=policy_gradient", "method.resource_log=true"]),
                                           pytest.param("sgas_cri2", ["space=darts", "method.warmup_dec_epoch=0",
                                                                      "method.decision_freq=1"], marks=pytest.mark.slow)])
def test_baselines_resume_bit_identically(tmp_path, monkeypatch, method, extra):
    """Interrupted mid-epoch (SIGUSR1 at step 3) and resumed, every baseline ends with the bits of a straight run:
    its extra state (β, ε, τ) and its host-side draws come back with the checkpoint."""
    import json
    import os
    import signal

    import nasrun.engine as engine
    from nasrun.errors import Interrupted
    from nasrun.search import run_search

    from .conftest import make_cfg

    cfg = make_cfg([f"method={method}", "trainer.epochs=3", *extra])
    run_search(cfg, tmp_path / "straight")
    calls, original = {"n": 0}, engine.accumulate

    def signal_at_step_3(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(engine, "accumulate", signal_at_step_3)
    with pytest.raises(Interrupted):
        run_search(cfg, tmp_path / "resumed")
    monkeypatch.setattr(engine, "accumulate", original)
    run_search(cfg, tmp_path / "resumed")
    states = [torch.load(tmp_path / d / "checkpoint.pt", weights_only=False)["method"] for d in ("straight", "resumed")]
    for k, v in states[0]["alphas"].items():
        assert torch.equal(v, states[1]["alphas"][k]), k
    for key in ("betas", "edges"):
        for k, v in states[0].get(key, {}).items():
            assert torch.equal(v, states[1][key][k]), (key, k)
    lines = [[json.loads(x)["train_loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
             for d in ("straight", "resumed")]
    assert lines[0] == lines[1]


def sgas_reference_scores(alpha, history=None):
    """lightaime/sgas edge_decision, restated with numpy: importance, certainty (1 − normalised entropy), stability."""
    import numpy as np

    mat = np.exp(alpha - alpha.max(-1, keepdims=True))
    mat = mat / mat.sum(-1, keepdims=True)
    importance = mat[:, 1:].sum(-1)
    probs = mat[:, 1:] / importance[:, None]
    entropy = -(probs * np.log(probs)).sum(-1) / np.log(probs.shape[1])

    def norm(v):
        return (v - v.min()) / (v.max() - v.min()) if v.max() > v.min() else np.zeros_like(v)

    score = norm(importance) * norm(1 - entropy)
    if history is not None:
        inter = np.mean([np.minimum(h, probs).sum(-1) for h in history], 0) if history else np.zeros(len(probs))
        score = score * norm(inter)
    return score, probs


@pytest.mark.parametrize("criterion", [1, 2])
def test_sgas_greedy_decisions_follow_the_reference_scores(criterion):
    """Over a 50-epoch schedule (α drifting between epochs), each decision takes the undecided edge with the best
    reference score and its strongest non-none op; nodes keep exactly two inputs; decided rows mix as one-hots."""
    import numpy as np

    from nasrun.config import build

    from .conftest import make_cfg

    cfg = make_cfg(["space=darts", f"method={'sgas' if criterion == 1 else 'sgas_cri2'}"])
    space = build(cfg.space)
    m = build(cfg.method, supernet=space.build_supernet(4), space=space)
    g = torch.Generator().manual_seed(criterion)
    history, expected = {"normal": [], "reduce": []}, []
    epochs = 9 + m.decision_freq * 7 + 6
    for epoch in range(epochs):
        with torch.no_grad():
            for a in m.alphas.values():
                a.add_(0.3 * torch.randn(a.shape, generator=g))
        # what the reference decides after this epoch, from the α it sees then
        due = epoch >= 9 and (epoch - 9) % m.decision_freq == 0
        for key in ("normal", "reduce"):
            alpha = m.alphas[key].detach().double().numpy()
            score, probs = sgas_reference_scores(alpha, history[key] if criterion == 2 else None)
            if criterion == 2:
                history[key] = (history[key] + [probs])[-4:]
            candidates = [e for e, s in enumerate(m.selected[key]) if s == -1]
            if due and candidates:
                edge = max(candidates, key=lambda e: (score[e], -e))
                expected.append((epoch, key, edge, space.op_names(key)[edge][int(np.argmax(probs[edge])) + 1]))
        m.on_epoch_start(epoch + 1, epochs)  # the method decides after the epoch that just ended
    got = [(d["epoch"], d["cell"], d["edge"], d["op"]) for d in m.decisions]
    assert got == expected and len(got) == 16
    w = m.derive_weights()
    for key in ("normal", "reduce"):
        for node in range(4):
            rows = [e for e, (n, _) in enumerate(space.edges) if n == node]
            kept = [e for e in rows if w[key][e].sum() == 1]
            assert len(kept) == 2 and all(w[key][e].sum() == 0 for e in rows if e not in kept)
            assert all(w[key][e].max() == 1 for e in kept)


def test_gradient_rules_compose_with_relaxations_and_selectors(tmp_path):
    """TSE-DrNAS ([TSE] Table 2: the TSE rule on DrNAS's Dirichlet relaxation) and SP-DARTS × DARTS-PT run as the
    seed papers combine them; TSE's α gradient then flows through the Dirichlet samples."""
    import json

    from nasrun.search import run_search

    from .conftest import make_cfg

    _, _, tse = tiny_method(["method=tse_darts", "method.relaxation=dirichlet", "method.inner_steps=2"],
                            dtype=torch.float64)
    assert tse.graph_safe  # the Dirichlet draw is made on the device inside the captured step
    w1, w2 = tse.edge_weights()["normal"], tse.edge_weights()["normal"]
    assert not torch.equal(w1, w2) and torch.allclose(w1.sum(-1), torch.ones(6, dtype=torch.float64))
    before = tse.alphas["normal"].detach().clone()
    tse.step_group([(batch(7), None), (batch(8), None)])
    assert not torch.equal(before, tse.alphas["normal"].detach())
    run_search(make_cfg(["method=tse_darts", "method.relaxation=dirichlet", "method.inner_steps=2", "trainer.epochs=1"]),
               tmp_path / "tse_drnas")
    summary = run_search(make_cfg(["method=sp_darts", "selector=pt", "selector.proj_intv=1",
                                   "selector.max_valid_batches=1", "trainer.epochs=1"]), tmp_path / "sp_pt")
    assert summary["selector"] == "pt" and json.loads((tmp_path / "sp_pt" / "selection.json").read_text())["decisions"]
    from nasrun.errors import UserError

    with pytest.raises(UserError, match="method.relaxation='gumbel'"):
        tiny_method(["method=darts", "method.relaxation=gumbel"])


def test_pdarts_skip_dropout_schedule_and_scope():
    """p·(E−e−1)/E in the w-only epochs, p·exp(−0.2(e−10)) after (the reference's update_p); it drops only the
    outputs of identity skips, and only in training."""
    from nasrun.spaces import get_space

    space = get_space("darts", C=4, layers=3, skip_dropout=0.4)
    sup = space.build_supernet(4).double()
    for e, expected in [(0, 0.4 * 24 / 25), (9, 0.4 * 15 / 25), (10, 0.4), (17, 0.4 * math.exp(-1.4))]:
        sup.on_epoch_start(e, 25)
        assert all(c.skip_dropout == pytest.approx(expected) for c in sup.cells), e
    cell = sup.cells[0]
    ops = space.op_names("normal")[0]
    skip, conv = ops.index("skip_connect"), ops.index("sep_conv_3x3")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    cell.skip_dropout = 1.0
    only_skip = F.one_hot(torch.tensor(skip), len(ops)).double()
    only_conv = F.one_hot(torch.tensor(conv), len(ops)).double()
    cell.train()
    with torch.no_grad():
        assert torch.equal(cell._edge(0, x, only_skip), torch.zeros_like(x))  # p = 1 drops every skip output
        conv_out = cell._edge(0, x, only_conv)
        cell.skip_dropout = None
        assert torch.allclose(conv_out, cell._edge(0, x, only_conv))  # other ops untouched (BN in train mode both)
        cell.skip_dropout = 1.0
        cell.eval()
        assert torch.equal(cell._edge(0, x, only_skip), x)  # no dropout outside training


def reference_pdarts_final(probs, has_none, max_sk=2, skip=3):
    """chenxin061/pdarts last-stage derivation restated on switch matrices: probs [14, K] over the global op list
    (0 = none, 3 = skip), K ops on per edge; none zeroed; keep_1_on, keep_2_branches, then delete the weakest skip
    while there are more than max_sk."""
    import numpy as np

    probs = probs.copy()
    probs[has_none, 0] = 0

    def keep_1_on(p):
        return [int(np.argmax(p[i])) for i in range(14)]

    def keep_2_branches(p):
        best = p.max(-1)
        keep, start, n = [0, 1], 2, 3
        for _ in range(3):
            order = sorted(range(n), key=lambda x: best[start + x])
            keep += [order[-1] + start, order[-2] + start]
            start, n = start + n, n + 1
        return sorted(keep)

    op, edges = keep_1_on(probs), keep_2_branches(probs)
    while sum(op[e] == skip for e in edges) > max_sk:
        sk = [probs[e, skip] if op[e] == skip and e in edges else 1.0 for e in range(14)]
        probs[int(np.argmin(sk)), skip] = 0.0
        op, edges = keep_1_on(probs), keep_2_branches(probs)
    return {(e, op[e]) for e in edges}


def test_pdarts_final_keeps_at_most_two_skips_as_the_reference():
    """On random α over the full op list (skip made likely), the normal cell's derivation equals the restated
    reference, and holds ≤ 2 skips."""
    import numpy as np

    from nasrun.selectors.pdarts_final import PdartsFinal
    from nasrun.spaces import get_space

    space = get_space("darts", C=4, layers=3)
    ops = space.op_names("normal")[0]
    _, _, m = tiny_method(["space=darts"])
    g = torch.Generator().manual_seed(0)
    for trial in range(30):
        with torch.no_grad():
            for a in m.alphas.values():
                a.copy_(torch.randn(a.shape, generator=g))
                a[:, ops.index("skip_connect")] += 1.5  # skip-heavy, so the restriction has work to do
        (_, genotype), = PdartsFinal(max_skips=2).select(space, m)
        probs = F.softmax(m.alphas["normal"].detach().double(), -1).numpy()
        expected = reference_pdarts_final(probs, np.ones(14, bool))
        gene = genotype.normal
        got = set()
        for node in range(4):
            for name, j in gene[2 * node:2 * node + 2]:
                e = [i for i, (n, s) in enumerate(space.edges) if n == node and s == j][0]
                got.add((e, ops.index(name)))
        assert got == expected, trial
        assert sum(name == "skip_connect" for name, _ in gene) <= 2


def test_pdarts_stages_chain_through_the_pruned_ops(tmp_path):
    """Stage 1 keeps the 5 strongest ops per edge (the reference's get_min_k on softmax(α)); stage 2 is built on
    exactly those lists from stage 1's selection.json, keeps 3; stage 3 derives the genotype."""
    import json

    from nasrun.search import run_search

    from .conftest import make_cfg, tiny_space

    small = [*tiny_space("darts"), "dataset=synthetic", "trainer.epochs=1", "trainer.batch_size=16", "benchmark=none",
             "trainer.device=cpu", "trainer.progress=false", "space.skip_dropout=0.1", "space.layers=3"]
    run_search(make_cfg(["+experiment=pdarts_stage1", *small], tiny=False), tmp_path / "s1")
    kept = json.loads((tmp_path / "s1" / "selection.json").read_text())["decisions"]
    alphas = torch.load(tmp_path / "s1" / "checkpoint.pt", weights_only=False)["method"]["alphas"]
    from nasrun.spaces import get_space

    ops = get_space("darts").op_names("normal")[0]
    for key in ("normal", "reduce"):
        probs = F.softmax(alphas[key].float(), -1)
        for e in range(14):
            top5 = sorted(torch.argsort(probs[e], descending=True)[:5].tolist())
            assert kept[key][e] == [ops[o] for o in top5]
    run_search(make_cfg(["+experiment=pdarts_stage2", *small, f"space.edge_ops_file={tmp_path / 's1' / 'selection.json'}"],
                        tiny=False), tmp_path / "s2")
    a2 = torch.load(tmp_path / "s2" / "checkpoint.pt", weights_only=False)["method"]["alphas"]
    assert a2["normal"].shape == (14, 5)
    kept2 = json.loads((tmp_path / "s2" / "selection.json").read_text())["decisions"]
    assert all(set(kept2[k][e]) <= set(kept[k][e]) and len(kept2[k][e]) == 3 for k in kept2 for e in range(14))
    summary = run_search(make_cfg(["+experiment=pdarts_stage3", *small,
                                   f"space.edge_ops_file={tmp_path / 's2' / 'selection.json'}"], tiny=False), tmp_path / "s3")
    assert summary["selector"] == "pdarts_final" and summary["skip_count"] <= 2


def test_snas_single_level_step_through_the_relaxed_sample():
    """The α gradient of SNAS's joint step is ∂L_train/∂α at w = softmax((α + g)/τ), g = −log(−log u) from the CPU
    generator (no validation batch), and τ follows (1 − e/150)(1 − 0.03) + 0.03, one epoch ahead (``temp_offset``)."""
    _, sup, m = tiny_method(["method=snas", "method.temp_offset=0"], dtype=torch.float64)
    for e, tau in [(0, 1.0), (75, 0.515), (149, (1 / 150) * 0.97 + 0.03), (200, 0.03)]:
        m.on_epoch_start(e, 150)
        assert m.temp == pytest.approx(tau)
    m.on_epoch_start(10, 150)
    m.w_opt = torch.optim.SGD(sup.parameters(), lr=0.0)  # keep the weights, look at α's gradient only
    m.arch_opt = torch.optim.SGD(m.arch_parameters(), lr=0.0)
    x, y = batch(9)
    alpha = m.alphas["normal"].detach().clone().requires_grad_()
    torch.manual_seed(4)
    u = torch.rand(alpha.shape, dtype=m._gumbel["normal"].dtype).clamp_min(torch.finfo(torch.float64).tiny)
    w = F.softmax((alpha + (-(-u.log()).log()).double()) / m._temp.double(), -1)  # τ as the step reads it
    (expected,) = torch.autograd.grad(F.cross_entropy(sup(x, {"normal": w}), y), alpha)
    torch.manual_seed(4)
    m.prepare_step()
    m.device_step((x, y), None)
    got = m.alphas["normal"].grad
    scale = min(1.0, 10.0 / expected.norm().item())  # the reference clips α's gradient to norm 10
    assert torch.allclose(got, expected * scale, rtol=1e-6, atol=1e-10)


def test_snas_searches_on_the_whole_training_set(tmp_path):
    from nasrun.search import build_search

    from .conftest import make_cfg

    *_, stream, _, _, method = build_search(make_cfg(["method=snas", "dataset.synthetic.n_train=64"]), torch.device("cpu"))
    assert method.merge_train_val and len(stream.train_idx) == 64 and stream.steps == 4


def loss_by_finite_differences(sup, weights_of, alpha, x, y, h=1e-6):
    """∂L/∂α by central differences of the loss in float64 (no autograd)."""
    grad = torch.zeros_like(alpha)
    with torch.no_grad():
        for idx in range(alpha.numel()):
            bumped = []
            for sign in (1, -1):
                a = alpha.clone().view(-1)
                a[idx] += sign * h
                bumped.append(F.cross_entropy(sup(x, weights_of(a.view_as(alpha))), y).item())
            grad.view(-1)[idx] = (bumped[0] - bumped[1]) / (2 * h)
    return grad


def test_gaea_step_is_exponentiated_gradient_on_the_simplex():
    """α mixes the ops as is; one α step is α ⊙ exp(−η g) renormalised per row, with g the valid-loss gradient by
    finite differences; it satisfies the mirror-descent optimality condition log(α'/α) + η g = const per row."""
    _, sup, m = tiny_method(["method=gaea", "method.arch_lr=0.3"], dtype=torch.float64)
    torch.manual_seed(3)
    alpha0 = F.softmax(torch.randn(m.alphas["normal"].shape, dtype=torch.float64), -1)
    with torch.no_grad():
        m.alphas["normal"].copy_(alpha0)
    assert torch.equal(m.edge_weights()["normal"], m.alphas["normal"])  # no softmax
    train, valid = batch(5), batch(6)
    sup.eval()  # BN running statistics: the loss is a function of α alone
    g = loss_by_finite_differences(sup, lambda a: {"normal": a}, alpha0, *valid)
    m.arch_step(train, valid)
    got = m.alphas["normal"].detach()
    expected = alpha0 * torch.exp(-0.3 * g)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)
    residual = torch.log(got / alpha0) + 0.3 * g
    assert torch.allclose(residual, residual[:, :1].expand_as(residual), atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(6, dtype=torch.float64))


def test_gaea_starts_uniform_and_clamps_at_the_floor():
    """α starts at 1/K; where α·e^{−ηg} falls under 1e-5 the reference's floor max(·, 1e-5) applies before the row is
    normalised (checked against that formula in float64), and an η that overflows e^{−ηg} leaves finite rows."""
    from nasrun.config import build

    cfg = make_cfg(["method=gaea"])
    space = build(cfg.space)
    m = build(cfg.method, supernet=space.build_supernet(4).double(), space=space)
    assert torch.equal(m.alphas["normal"], torch.full((6, 5), 0.2))
    with torch.no_grad():
        m.alphas["normal"].data = m.alphas["normal"].data.double()
    valid = batch(2)
    (g,), *_ = m.first_order_grad(valid)
    m.eta = 15 / g.abs().max().item()  # η·g spans [−15, 15]: 0.2·e^{−15} ≈ 6e-8 is under the floor
    u = 0.2 * torch.exp(-m.eta * g)
    assert (u < 1e-5).any()
    expected = u.clamp(min=1e-5) / u.clamp(min=1e-5).sum(-1, keepdim=True)
    m.arch_step(batch(1), valid)
    assert torch.allclose(m.alphas["normal"].detach(), expected, rtol=1e-9)
    m.eta = 1e6  # e^{−ηg} overflows; the update stays a distribution (the reference's would be nan)
    for _ in range(2):
        m.arch_step(batch(1), valid)
        a = m.alphas["normal"].detach()
        assert torch.isfinite(a).all() and torch.allclose(a.sum(-1), torch.ones(6, dtype=torch.float64))


def test_gaea_learned_edges_per_node():
    """GAEA PC-DARTS: edges start at 1/fan-in, an edge step multiplies by exp(−η g) and renormalises over each node's
    inputs, the ops mix with α_e·edge_e, and the genotype is read from that product."""
    _, sup, m = tiny_method(["space=darts", "method=gaea", "method.learn_edges=true", "method.edge_lr=0.5"],
                            dtype=torch.float64)
    fan_in = torch.tensor([2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 5], dtype=torch.float64)
    m2 = type(m)(sup, m.space, learn_edges=True)
    assert torch.allclose(m2.edges["normal"].double(), 1 / fan_in)
    with torch.no_grad():
        for k in m.alphas:
            m.alphas[k].copy_(F.softmax(m.alphas[k], -1))
            m.edges[k].copy_(1 / fan_in)
    e0 = {k: v.detach().clone() for k, v in m.edges.items()}
    a = m.alphas["normal"].detach()
    assert torch.allclose(m.edge_weights()["normal"], a * e0["normal"][:, None])
    grads, *_ = m.first_order_grad(batch(4))
    g_edges = dict(zip(sorted(m.edges), grads[len(m.alphas):]))
    m.arch_step(batch(3), batch(4))
    for k in m.edges:
        raw = e0[k] * torch.exp(-0.5 * g_edges[k])
        start = 0
        for n_in in (2, 3, 4, 5):
            rows = slice(start, start + n_in)
            assert torch.allclose(m.edges[k].detach()[rows], raw[rows] / raw[rows].sum(), rtol=1e-6), (k, n_in)
            start += n_in
    w = m.derive_weights()["normal"]
    assert torch.allclose(w, m.alphas["normal"].detach() * m.edges["normal"].detach()[:, None])


def test_gaea_erm_draws_both_batches_from_the_training_images():
    from nasrun.search import build_search

    from .conftest import make_cfg

    *_, stream, _, _, m = build_search(make_cfg(["method=gaea", "method.single_level=true",
                                                 "dataset.synthetic.n_train=64"]), torch.device("cpu"))
    assert m.single_level and len(stream.train_idx) == 64 and torch.equal(stream.valid_idx, stream.train_idx)
    *_, stream, _, _, m = build_search(make_cfg(["method=gaea", "dataset.synthetic.n_train=64"]), torch.device("cpu"))
    train_only = stream.train_idx.clone()
    stream.valid_from_test = True  # the NB201 CIFAR-100 split: the valid half is test images
    stream.single_level()
    assert torch.equal(stream.train_idx, train_only) and torch.equal(stream.valid_idx, train_only)


def test_gaea_presets_follow_the_reference_configs():
    from .test_presets import preset_method

    for name, single, selector in (("gaea_nb201_erm", True, "argmax"), ("gaea_nb201_bilevel", False, "best_epoch")):
        cfg, m = preset_method(name)
        full = make_cfg([f"+experiment={name}"], tiny=False)
        assert list(full.space.ops) == ["skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
        assert (full.space.C, full.space.N, full.space.track_running_stats) == (24, 5, True)
        assert (full.trainer.epochs, full.trainer.batch_size, full.selector.name) == (25, 64, selector)
        assert m.single_level is single and m.eta == 0.1 and not m.learn_edges
        m.on_epoch_start(24, 25)  # epoch 24 of a schedule laid out over 50: (1 + cos(24π/50))/2
        expected = 0.001 + (0.025 - 0.001) * (1 + math.cos(math.pi * 24 / 50)) / 2
        assert m.w_opt.param_groups[0]["lr"] == pytest.approx(expected)
        assert m.w_opt.param_groups[0]["momentum"] == 0.9 and not m.w_opt.param_groups[0]["nesterov"]
        assert m.w_opt.param_groups[0]["weight_decay"] == 3e-4
    full = make_cfg(["+experiment=gaea_pc_darts"], tiny=False)
    assert (full.space.partial_channels, full.trainer.batch_size, full.trainer.epochs) == (4, 256, 50)
    cfg, m = preset_method("gaea_pc_darts")
    assert m.learn_edges and m.edge_lr == 0.1 and m.eta == 0.1
    m.on_epoch_start(0, 50)
    assert m.w_opt.param_groups[0]["lr"] == pytest.approx(0.1) and m.train_arch


def test_best_epoch_selector_rolls_back_to_the_peak(tmp_path):
    import json

    from nasrun.search import run_search

    from .conftest import make_cfg

    summary = run_search(make_cfg(["method=gaea", "selector=best_epoch", "trainer.epochs=3"]), tmp_path)
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    accs = [r["valid_acc"] for r in history]
    best = accs.index(max(accs))
    chosen = json.loads((tmp_path / "genotype.json").read_text())
    assert chosen["genotype"] == history[best]["genotype"] == summary["genotype"]
    assert chosen["selector"] == f"best_epoch_valid_acc@{best}"


def snas_resource(overrides):
    """SNAS on a float64 3-cell DARTS supernet with its op costs measured on 8×8 inputs."""
    space, sup, m = tiny_method(["method=snas", "space=darts", "space.layers=3", *overrides], dtype=torch.float64)
    m.costs = m.measure_costs(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    return space, sup, m


def test_snas_op_costs_follow_the_reference_formulas():
    """Parameter count, FLOPs and MAC of the ops by SNAS operations.py, written out by hand for a 3-cell DARTS
    supernet at C=4 on 8×8 inputs (cell 0 normal, C=4, 8×8; cell 1 reduction, C=8: stride-2 edges read 8×8, the
    others 4×4) and an NB201 conv; the measuring forward leaves the RNG and BN statistics as they were."""
    space, sup, m = snas_resource(["method.resource=discrete"])
    size, flops, mac = m.costs["normal"][:, 0]  # [E, K] of cell 0
    red = m.costs["reduce"][:, 0]  # cell 1
    ops = space.op_names("normal")[0]
    o = {name: ops.index(name) for name in ops}
    assert (size[0, o["sep_conv_3x3"]], flops[0, o["sep_conv_3x3"]], mac[0, o["sep_conv_3x3"]]) == (104, 104 * 64, 2152)
    assert (size[0, o["dil_conv_5x5"]], mac[0, o["dil_conv_5x5"]]) == (116, 64 * 16 + 116)
    assert (size[0, o["skip_connect"]], flops[0, o["skip_connect"]], mac[0, o["skip_connect"]]) == (0, 0, 512)
    assert (flops[0, o["max_pool_3x3"]], mac[0, o["max_pool_3x3"]]) == (2304, 512)
    assert (size[:, o["none"]] == 0).all() and (mac[:, o["none"]] == 0).all()
    assert (red[0][0, o["sep_conv_3x3"]], red[1][0, o["sep_conv_3x3"]], red[2][0, o["sep_conv_3x3"]]) == (272, 272 * 16, 1680)
    assert (red[0][0, o["skip_connect"]], red[1][0, o["skip_connect"]], red[2][0, o["skip_connect"]]) == (64, 1024, 1216)
    node_edge = space.edges.index((1, 2))  # node 1 ← node 0: 4×4, stride 1
    assert red[2][node_edge, o["sep_conv_3x3"]] == 16 * 64 + 272
    assert (red[2][node_edge, o["max_pool_3x3"]], red[2][0, o["max_pool_3x3"]]) == (2 * 16 * 8, 5 * 16 * 8)
    from nasrun.methods.snas import op_cost
    from nasrun.spaces.nb201 import make_op

    assert op_cost(make_op("nor_conv_3x3", 4, False, False), 8, 4) == (144, 144 * 64, 64 * 8 + 144)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    state, bn = torch.get_rng_state(), {k: v.clone() for k, v in sup.state_dict().items()}
    m.measure_costs(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v, sup.state_dict()[k]) for k, v in bn.items())


def reference_penalty(m, weights, estimator, separation, log):
    """SNAS model_search.py's per-cell loop restated: Σ over cells of Σ over edges of the edge penalty, the normal
    cells' sum divided by their count, the reduction cells' by theirs times the ratio, times λ."""
    def clean_log(r):
        return torch.log(torch.where(r.abs() < 1, torch.ones_like(r), r).abs())

    total = 0
    for key, cost in m.costs.items():
        alpha = m.alphas[key]
        w = F.softmax(alpha, -1) if estimator == "discrete" else weights[key]
        cells = []
        for c in range(cost.shape[1]):
            size, flops, mac = ((cost[i, c] * (w.detach() if estimator == "policy_gradient" else w)).sum(-1)
                                for i in range(3))
            if separation == "all":
                pen = (clean_log(size) + clean_log(flops) + clean_log(mac)) / 3 if log else \
                    (size * 2 + flops / 4000 + mac / 100) * 0.43
            else:
                r = {"size": size, "flops": flops, "mac": mac}[separation]
                pen = clean_log(r) if log else r
            if estimator == "policy_gradient":
                n, tau = alpha.shape[-1], m._temp
                wt = w.clamp_min(1e-4)
                logp = (math.lgamma(n) + (n - 1) * torch.log(tau) + alpha.sum(-1) - (tau + 1) * wt.log().sum(-1)
                        - n * (wt ** (-tau) * alpha.exp()).clamp_min(1e-4).sum(-1).log())
                pen = logp * pen.detach()
            cells.append(pen.sum())
        mean = sum(cells) / len(cells)
        total = total + (m.resource_ratio * mean if key == "reduce" else mean)
    return m.resource_lambda * total


@pytest.mark.parametrize("estimator, separation, log", [("reparametrization", "all", True), ("reparametrization", "mac", False),
                                                        ("discrete", "size", False), ("discrete", "all", True),
                                                        ("policy_gradient", "flops", True), ("policy_gradient", "all", False)])
def test_snas_resource_penalty_and_its_gradient(estimator, separation, log):
    """The penalty equals the reference's per-cell loop; its α gradient matches central finite differences (the
    Gumbel noise held fixed); discrete on a linear cost has the closed-form gradient p_j(c_j − Σ p c)."""
    _, _, m = snas_resource([f"method.resource={estimator}", f"method.resource_separation={separation}",
                             f"method.resource_log={str(log).lower()}", "method.resource_ratio=0.5"])
    m.prepare_step()
    penalty = m.resource_penalty(m.edge_weights())
    assert penalty.item() == pytest.approx(reference_penalty(m, m.edge_weights(), estimator, separation, log).item(),
                                           rel=1e-10)
    alphas = m.arch_parameters()
    grads = torch.autograd.grad(penalty, alphas)
    if estimator != "policy_gradient":  # (its R is held constant, so finite differences would see a different function)
        for a, g in zip(alphas, grads):
            fd = torch.zeros_like(a)
            for idx in range(0, a.numel(), 7):
                vals = []
                for sign in (1, -1):
                    with torch.no_grad():
                        a.view(-1)[idx] += sign * 1e-6
                    vals.append(m.resource_penalty(m.edge_weights()).item())
                    with torch.no_grad():
                        a.view(-1)[idx] -= sign * 1e-6
                fd.view(-1)[idx] = (vals[0] - vals[1]) / 2e-6
                assert g.view(-1)[idx].item() == pytest.approx(fd.view(-1)[idx].item(), rel=1e-5, abs=1e-9), idx
    else:  # ∇ of λ·Σ logp(α, w)·R with R constant: the autograd gradient of the loop with R detached
        ref = torch.autograd.grad(reference_penalty(m, m.edge_weights(), estimator, separation, log), alphas)
        assert all(torch.allclose(g, r) for g, r in zip(grads, ref))
    if estimator == "discrete" and not log:
        p = F.softmax(m.alphas["normal"].detach(), -1)
        c = m.costs["normal"][0]  # size, [cells, E, K]
        closed = m.resource_lambda * (p * (c - (p * c).sum(-1, keepdim=True))).sum(0) / c.shape[0]
        assert torch.allclose(grads[sorted(m.alphas).index("normal")], closed)


def test_snas_concrete_log_density_is_torchs_relaxed_one_hot():
    """SNAS ``logp`` is the log-density of the Concrete distribution: torch's RelaxedOneHotCategorical log_prob."""
    from torch.distributions import RelaxedOneHotCategorical

    from nasrun.methods.snas import concrete_log_prob

    torch.manual_seed(3)
    alpha, tau = torch.randn(6, 8, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    dist = RelaxedOneHotCategorical(tau, logits=alpha)
    w = dist.sample()
    w = w.clamp_min(1e-3) / w.clamp_min(1e-3).sum(-1, keepdim=True)  # inside the 1e-4 floors
    assert torch.allclose(concrete_log_prob(alpha, w, tau), dist.log_prob(w), rtol=1e-9)


def test_snas_resource_constraint_moves_alpha_to_cheaper_ops_and_is_refused_without_costs(tmp_path):
    from nasrun.search import run_search

    _, _, m = snas_resource(["method.resource=discrete", "method.resource_separation=size", "method.resource_lambda=1.0"])
    m.arch_opt = torch.optim.Adam(m.arch_parameters(), lr=0.05)
    m.w_opt = torch.optim.SGD(m.supernet.parameters(), lr=0.0)

    def expected_size():
        return sum((F.softmax(m.alphas[k].detach(), -1) * c[0]).sum().item() for k, c in m.costs.items())

    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 4, (4,))
    before = expected_size()
    for _ in range(20):
        m.step((x, y), None)
    assert expected_size() < 0.5 * before
    for extra, message in ((["space=nb1shot1_s1", "method.resource=discrete"], "no per-op cost model"),
                           (["method.resource=exact"], "choose null")):
        with pytest.raises(UserError, match=message):
            run_search(make_cfg(["method=snas", *extra]), tmp_path / "run")


def test_snas_resource_preset_follows_the_readme_command():
    full = make_cfg(["+experiment=snas_darts_resource"], tiny=False)
    assert (full.method.resource, full.method.resource_separation, full.method.resource_log) == ("reparametrization", "all", True)
    assert (full.method.resource_lambda, full.trainer.epochs, full.seed) == (1.5e-3, 150, 6)
    assert (full.space.layers, full.space.C) == (8, 16)
    assert full.space.search_drop_path == 0.3 and full.method.temp_min == 0.03


def reference_twin(sup, m):
    """For a reference loop restated in a test: a deep copy of the supernet, a copy of α, and the reference's SGD
    and Adam (None where the method's α optimiser is not Adam) with the method's hyper-parameters (as they are now:
    call after ``on_epoch_start``)."""
    import copy

    ref = copy.deepcopy(sup)
    alphas = {k: a.detach().clone().requires_grad_() for k, a in m.alphas.items()}
    g = m.w_opt.param_groups[0]
    w_opt = torch.optim.SGD(ref.parameters(), lr=g["lr"], momentum=g["momentum"], nesterov=g["nesterov"],
                            weight_decay=g["weight_decay"])
    g = m.arch_opt.param_groups[0]
    a_opt = (torch.optim.Adam([alphas[k] for k in sorted(alphas)], lr=g["lr"], betas=g["betas"], eps=g["eps"],
                              weight_decay=g["weight_decay"]) if isinstance(m.arch_opt, torch.optim.Adam) else None)
    return ref, alphas, w_opt, a_opt


def assert_same_state(sup, ref, m, alphas, atol=1e-12):
    """nasrun's weights and α equal the reference loop's, to ``atol``."""
    for (name, p), q in zip(sup.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=atol), name
    for k in alphas:
        assert torch.allclose(m.alphas[k], alphas[k], rtol=0, atol=atol), k


@pytest.mark.parametrize("scope", ["alpha_stale", "alpha", "weights"])
def test_weight_step_clipping_scope_follows_the_reference_loop(scope):
    """Issue 23 item 5: AutoDL's DARTS-V1 (and GDAS, and their copies in the SS/SP-DARTS repos) clip the norm of
    network.parameters(), α included, whose .grad at the w step holds this train loss's α gradient plus what the last
    α step left (only the weight optimiser is zeroed); DrNAS's NB201 code zeroes α's gradient first (``alpha``);
    quark0 clips the weights alone. The AutoDL loop restated in float64 (w step, then α step) with a clip small
    enough to act, three iterations: weights and α equal nasrun's."""

    _, sup, m = tiny_method(["method=darts", f"method.grad_clip_scope={scope}", "method.grad_clip=0.05"],
                            dtype=torch.float64)
    m.on_epoch_start(0, 10)
    ref, alphas, w_opt, a_opt = reference_twin(sup, m)
    norms = []
    for t in range(3):
        (x, y), (xv, yv) = batch(2 * t), batch(2 * t + 1)
        m.device_step((x, y), (xv, yv))
        w_opt.zero_grad()
        if scope == "alpha":
            a_opt.zero_grad()
        F.cross_entropy(ref(x, {k: F.softmax(a, -1) for k, a in alphas.items()}), y).backward()
        clipped = list(ref.parameters()) + ([] if scope == "weights" else [alphas[k] for k in sorted(alphas)])
        norms.append(float(torch.nn.utils.clip_grad_norm_(clipped, 0.05)))
        w_opt.step()
        a_opt.zero_grad()
        F.cross_entropy(ref(xv, {k: F.softmax(a, -1) for k, a in alphas.items()}), yv).backward()
        a_opt.step()
    assert min(norms) > 0.05  # the clip acted at every step
    assert_same_state(sup, ref, m, alphas)
    assert all(a.grad is None for a in m.arch_parameters())  # α's gradient of the w step leaves no trace


def test_clipping_scopes_differ_and_the_stale_gradient_resumes():
    """The three scopes give three different weight steps once the clip acts (so the test above can tell them
    apart), and the stale α gradient travels in the checkpoint."""
    from nasrun.config import build

    out = {}
    for scope in ("weights", "alpha", "alpha_stale"):
        _, sup, m = tiny_method(["method=darts", f"method.grad_clip_scope={scope}", "method.grad_clip=0.05"],
                                dtype=torch.float64)
        m.on_epoch_start(0, 10)
        for t in range(2):
            m.device_step(batch(2 * t), batch(2 * t + 1))
        out[scope] = torch.cat([p.detach().flatten() for p in sup.parameters()])
        if scope == "alpha_stale":
            state = m.state_dict()
            assert any(s.abs().sum() > 0 for s in state["stale_alpha_grad"])
            cfg = make_cfg(["method=darts", "method.grad_clip_scope=alpha_stale"])
            space = build(cfg.space)
            twin = build(cfg.method, supernet=space.build_supernet(4).to(torch.float64), space=space)
            twin.load_state_dict(state)
            assert all(torch.equal(a, b) for a, b in zip(twin._stale, m._stale))
    assert not torch.allclose(out["weights"], out["alpha"]) and not torch.allclose(out["alpha"], out["alpha_stale"])
    with pytest.raises(UserError, match="grad_clip_scope"):
        tiny_method(["method=darts", "method.grad_clip_scope=everything"])


def test_drnas_nb201_search_cells_have_no_conv_bias():
    """Issue 23 item 6: DrNAS's NB201 ReLUConvBN has no conv bias (201-space/cell_operations.py); AutoDL's, the
    default, has one in search cells (BN not affine). The fused forward with bias-free convs is tested in
    tests/test_fused.py."""
    import torch.nn as nn

    from nasrun.config import build

    def search_convs(overrides):
        cfg = make_cfg([*overrides, "space.C=4", "space.N=1"], tiny=False)
        sup = build(cfg.space).build_supernet(10)
        return [m for _, cell, _ in sup.search_cells() for m in cell.modules() if isinstance(m, nn.Conv2d)]

    for preset in ("drnas_nb201", "drnas_progressive_nb201"):
        convs = search_convs([f"+experiment={preset}"])
        assert convs and all(m.bias is None for m in convs), preset
    convs = search_convs(["space=nb201"])
    assert convs and all(m.bias is not None for m in convs)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("reduction", [False, True])
def test_gaea_pc_darts_bypass_is_scaled_by_the_edge_weight_alone(fused, reduction):
    """Issue 23 item 4: GAEA PC-DARTS's reference multiplies each edge's whole partial-channel output by the edge
    weight, its MixedOp summing α_k·op_k (no softmax) on C/K channels beside the untouched rest. Restated here on one
    DARTS search cell in float64 from the cell's own modules; nasrun's cell (per-op and fused) with the edge weights
    as bypass scales gives the same output and the same α and edge gradients. Scaling the bypass by the weight sum
    (the PC-DARTS fold) would add e·⟨g, bypass⟩ to every α of the row: the test sees it."""
    from nasrun.spaces import get_space
    from nasrun.spaces.fused import set_fused
    from nasrun.spaces.ops import channel_shuffle

    torch.manual_seed(0)
    space = get_space("darts", C=8, layers=3, partial_channels=2)
    sup = space.build_supernet(10).to(torch.float64)
    cell = sup.cells[1 if reduction else 0]
    assert cell.reduction == reduction
    set_fused(cell, fused)
    E, K = len(cell.ops), len(cell.ops[0])
    alpha = torch.rand(E, K, dtype=torch.float64)
    alpha = (alpha / alpha.sum(-1, keepdim=True)).requires_grad_()
    edge = torch.rand(E, dtype=torch.float64).requires_grad_()
    C_pp, C_p = cell.init_args["C_pp"], cell.init_args["C_p"]
    side = 8
    side0 = side * (2 if cell.init_args["reduction_prev"] else 1)
    s0 = torch.randn(2, C_pp, side0, side0, dtype=torch.float64)
    s1 = torch.randn(2, C_p, side, side, dtype=torch.float64)
    probe = None

    def reference():
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for node in cell.by_node:
            total = 0
            for e, j in node:
                h = states[j]
                c = h.shape[1] // 2
                mixed = sum(alpha[e, k] * op(h[:, :c]) for k, op in enumerate(cell.ops[e]))
                rest = h[:, c:] if cell.bypass_pool is None or mixed.shape[-1] == h.shape[-1] else cell.bypass_pool(h[:, c:])
                total = total + edge[e] * channel_shuffle(torch.cat([mixed, rest], 1), 2)
            states.append(total)
        return torch.cat(states[2:], 1)

    outs = {}
    for name, run in (("reference", reference), ("nasrun", lambda: cell(s0, s1, alpha * edge[:, None], None, edge)),
                      ("weight_sum", lambda: cell(s0, s1, alpha * edge[:, None], None))):
        torch.manual_seed(1)
        y = run()
        if probe is None:
            probe = torch.randn_like(y)
        grads = torch.autograd.grad((y * probe).sum(), [alpha, edge])
        outs[name] = (y.detach(), *grads)
    for got, want in zip(outs["nasrun"], outs["reference"]):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(outs["weight_sum"][1], outs["reference"][1], rtol=1e-6, atol=1e-8)


def reference_pgd(net, x, y, base, noise, eps, steps):
    """SmoothDARTS ``attacker/perturb.py::Linf_PGD_alpha`` restated on the simplex point ``base`` (float64): eval
    mode, random start base + ε·noise then clip, ``steps`` Linf_SGD steps of 2ε/steps on −loss (an ascent along the
    gradient's sign), each projected onto the ε-ball around base and clipped; back to base if the loss fell."""
    training = net.training
    net.eval()
    with torch.no_grad():
        loss_before = F.cross_entropy(net(x, base), y)
    a = {k: reference_clip(v + eps * noise[k]) for k, v in base.items()}
    for _ in range(steps):
        leaves = {k: v.clone().requires_grad_() for k, v in a.items()}
        grads = torch.autograd.grad(-F.cross_entropy(net(x, leaves), y), list(leaves.values()))
        with torch.no_grad():
            stepped = {k: v - 2 * eps / steps * torch.sign(g) for (k, v), g in zip(leaves.items(), grads)}
            a = {k: reference_clip(base[k] + (v - base[k]).clamp(-eps, eps)) for k, v in stepped.items()}
    with torch.no_grad():
        loss_after = F.cross_entropy(net(x, a), y)
    net.train(training)
    return dict(base) if loss_before > loss_after else a


@pytest.mark.parametrize("method", ["sdarts_rs", "sdarts_adv"])
def test_sdarts_step_equals_the_reference_step(method):
    """Issue 23, "also build": one whole SDARTS iteration against SmoothDARTS's train loop restated in float64 with
    the same δ: quark0's first-order α step (Adam on the valid loss at softmax(α)), then the perturbation (RS:
    clip(softmax(α) + ε·δ); ADV: the PGD above), then the w step at the perturbed point in training mode, the weights'
    norm clipped to 5, SGD. Weights and α after two iterations agree to 1e-12."""

    _, sup, m = tiny_method([f"method={method}"], dtype=torch.float64)
    m._epsilon = torch.zeros((), dtype=torch.float64)  # the method's device scalars in the test's float64 too
    m._noise = {k: torch.zeros_like(a) for k, a in m.alphas.items()}
    m.on_epoch_start(30, 50)
    ref, alphas, w_opt, a_opt = reference_twin(sup, m)
    for t in range(2):
        (x, y), (xv, yv) = batch(2 * t), batch(2 * t + 1)
        torch.manual_seed(10 + t)
        m.prepare_step()
        noise = {k: v.clone() for k, v in m._noise.items()}
        m.device_step((x, y), (xv, yv))
        a_opt.zero_grad()
        F.cross_entropy(ref(xv, {k: F.softmax(a, -1) for k, a in alphas.items()}), yv).backward()
        a_opt.step()
        base = {k: F.softmax(a.detach(), -1) for k, a in alphas.items()}
        if method == "sdarts_rs":
            point = {k: reference_clip(v + m.epsilon * noise[k]) for k, v in base.items()}
        else:
            point = reference_pgd(ref, x, y, base, noise, m.epsilon, m.attack_steps)
        w_opt.zero_grad()
        F.cross_entropy(ref(x, point), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        w_opt.step()
    assert_same_state(sup, ref, m, alphas)


def test_pdarts_step_equals_the_reference_step():
    """Issue 23, "also build": P-DARTS (chenxin061/pdarts ``train_search.py::train``), restated in float64 on a
    DARTS-space supernet with skip dropout on: once α trains, each iteration zeroes α's optimiser, takes the valid
    loss at softmax(α) in training mode, clips α's gradient norm, steps Adam; then zeroes the network optimiser, takes
    the train loss, clips the network parameters' norm alone and steps SGD. The clips are set small enough to act.
    Both draw the skip dropout from the same seed. Weights and α after three iterations agree to 1e-12."""

    from nasrun.config import build

    cfg = make_cfg(["method=pdarts", "space=darts", "space.skip_dropout=0.3", "method.arch_grad_clip=1e-3",
                    "method.grad_clip=0.05"])
    assert cfg.method.arch_first and cfg.method.grad_clip_scope == "weights" and cfg.method.arch_start_epoch == 10
    torch.manual_seed(0)
    space = build(cfg.space)
    sup = space.build_supernet(4).to(torch.float64)
    m = build(cfg.method, supernet=sup, space=space)
    with torch.no_grad():
        for a in m.alphas.values():
            a.data = a.data.to(torch.float64).normal_(0, 0.5)
    m.arch_opt = torch.optim.Adam(m.arch_parameters(), lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    m.on_epoch_start(12, 25)
    sup.on_epoch_start(12, 25)
    assert m.train_arch and sup.cells[0].skip_dropout > 0
    ref, alphas, w_opt, a_opt = reference_twin(sup, m)
    clipped = []
    for t in range(3):
        (x, y), (xv, yv) = batch(2 * t), batch(2 * t + 1)
        torch.manual_seed(100 + t)
        m.device_step((x, y), (xv, yv))
        torch.manual_seed(100 + t)
        a_opt.zero_grad()
        F.cross_entropy(ref(xv, {k: F.softmax(a, -1) for k, a in alphas.items()}), yv).backward()
        clipped.append(float(torch.nn.utils.clip_grad_norm_([alphas[k] for k in sorted(alphas)], 1e-3)) > 1e-3)
        a_opt.step()
        w_opt.zero_grad()
        F.cross_entropy(ref(x, {k: F.softmax(a.detach(), -1) for k, a in alphas.items()}), y).backward()
        clipped.append(float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)) > 0.05)
        w_opt.step()
    assert all(clipped)
    assert_same_state(sup, ref, m, alphas)


def preset_method(overrides, seed=0, spread=0.5):
    """A method built from its config as a run builds it (its own optimisers) on a tiny float64 supernet, α redrawn
    away from uniform (N(0, spread²); None: as initialised); returns ``(cfg, space, supernet, method)``."""
    from nasrun.config import build

    cfg = make_cfg(list(overrides))
    torch.manual_seed(seed)
    space = build(cfg.space)
    sup = space.build_supernet(4).to(torch.float64)
    m = build(cfg.method, supernet=sup, space=space)
    with torch.no_grad():
        for a in m.arch_parameters():
            a.data = a.data.to(torch.float64) if spread is None else a.data.to(torch.float64).normal_(0, spread)
    return cfg, space, sup, m


def reference_cosine(epoch, epochs, lr0, lr_min, offset=1):
    """``CosineAnnealingLR(T=epochs, eta_min)`` after ``epoch + offset`` steps (offset 1: stepped before the epoch)."""
    e = epoch + offset
    return lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * e / epochs)) / 2


@pytest.mark.parametrize("overrides, adam", [(["+experiment=snas_darts", "space=darts"], False),
                                             (["+experiment=snas_darts_resource", "space=darts"], False),
                                             pytest.param(["method=snas", "space=darts"], True, marks=pytest.mark.slow)],
                         ids=["snas_darts", "snas_resource", "adam"])
def test_snas_step_equals_the_reference_step(overrides, adam):
    """Issue 23, "also build": SNAS-Series/SNAS ``train_search.py::train`` restated in float64. The single-GPU branch
    (the presets): α are not model parameters; per step both optimisers zeroed, one Gumbel sample per cell type
    w = softmax((α + g)/τ), the train loss (+ λ·penalty, the reference's per-cell loop, with the resource term) backward,
    the weights' norm clipped to 5, α's to 10, SGD on the weights, then plain SGD(3e-4) on α (the distributed branch:
    Adam). Search drop-path on, drawn from the same seed. Two steps agree to 1e-12; τ and lr over the whole run are
    the reference schedulers' stepped before each epoch; α starts at N(·, 0.01²)."""
    _, _, sup, m = preset_method(overrides)
    assert isinstance(m.arch_opt, torch.optim.Adam if adam else torch.optim.SGD)
    if not adam:
        g = m.arch_opt.param_groups[0]
        assert (g["lr"], g["momentum"], g["weight_decay"]) == (3e-4, 0, 0)
    initial = torch.cat([a.detach().flatten() for a in preset_method(overrides, spread=None)[3].alphas.values()])
    assert 0.007 < float(initial.std()) < 0.014
    for e in (0, 1, 75, 148, 149):
        m.on_epoch_start(e, 150)
        assert m.temp == pytest.approx(max((1 - (e + 1) / 150) * 0.97 + 0.03, 0.03), rel=1e-12)
        assert m.w_opt.param_groups[0]["lr"] == pytest.approx(reference_cosine(e, 150, 0.025, 0.001), rel=1e-12)
    m._temp = m._temp.double()  # the method's device scalars in the test's float64 too
    m._gumbel = {k: v.double() for k, v in m._gumbel.items()}
    m.on_epoch_start(30, 150)
    sup.on_epoch_start(30, 150)
    if m.resource:
        m.costs = {k: v.double() for k, v in m.measure_costs(torch.randn(1, 3, 8, 8, dtype=torch.float64)).items()}
    ref, alphas, w_opt, _ = reference_twin(sup, m)
    order = sorted(alphas)
    a_opt = (torch.optim.Adam([alphas[k] for k in order], lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3) if adam
             else torch.optim.SGD([alphas[k] for k in order], lr=3e-4))
    tau = max((1 - 31 / 150) * 0.97 + 0.03, 0.03)
    for t in range(2):
        x, y = batch(t)
        torch.manual_seed(20 + t)
        m.prepare_step()
        torch.manual_seed(20 + t)
        gumbel = {k: -(-torch.rand(alphas[k].shape, dtype=torch.float64).log()).log() for k in m._gumbel}
        torch.manual_seed(40 + t)
        m.device_step((x, y), None)
        torch.manual_seed(40 + t)
        w_opt.zero_grad()
        a_opt.zero_grad()
        w = {k: F.softmax((a + gumbel[k]) / tau, -1) for k, a in alphas.items()}
        loss = F.cross_entropy(ref(x, w), y)
        if m.resource:
            twin = type("Ref", (), {"costs": m.costs, "alphas": alphas, "resource_ratio": 1.0, "_temp": m._temp,
                                    "resource_lambda": 1.5e-3})
            loss = loss + reference_penalty(twin, w, "reparametrization", "all", True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        torch.nn.utils.clip_grad_norm_([alphas[k] for k in order], 10.0)
        w_opt.step()
        a_opt.step()
    assert_same_state(sup, ref, m, alphas)


def test_sgas_step_with_decided_edges_equals_the_reference_step():
    """Issue 23, "also build": lightaime/sgas ``train_search.py`` restated in float64 over four short epochs with a
    decision after each: one α tensor per edge under one Adam; a decided or pruned edge's tensor is switched off
    (its gradient None, so Adam's weight decay no longer moves it) and the edge runs its chosen op alone (pruned: no
    output); per step the first-order α step on the valid batch, then the weights' SGD with their norm clipped to 5;
    decisions by the reference scores (criterion 1) with the two-inputs rule; lr stepped before each epoch. The
    decided edges, the weights and every α row (the frozen ones included) agree to 1e-12."""
    import numpy as np

    _, space, sup, m = preset_method(["+experiment=sgas_darts", "space=darts", "method.warmup_dec_epoch=0",
                                      "method.decision_freq=1"])
    m.on_epoch_start(0, 50)
    ref, alphas, w_opt, _ = reference_twin(sup, m)
    order = sorted(alphas)
    rows = {k: [alphas[k][e].detach().clone().requires_grad_() for e in range(len(alphas[k]))] for k in order}
    a_opt = torch.optim.Adam([r for k in ("normal", "reduce") for r in rows[k]], lr=3e-4, betas=(0.5, 0.999),
                             weight_decay=1e-3)
    chosen = {k: [-1] * len(rows[k]) for k in order}  # -1 undecided, 0 ('none') pruned, else the op

    def mixing():
        out = {}
        for k in order:
            w = []
            for e, r in enumerate(rows[k]):
                w.append(F.softmax(r, -1) if chosen[k][e] == -1 else F.one_hot(torch.tensor(chosen[k][e]), len(r)).double()
                         * (chosen[k][e] != 0))
            out[k] = torch.stack(w)
        return out

    def decide():
        for k in order:
            score, probs = sgas_reference_scores(torch.stack(rows[k]).detach().numpy())
            candidates = [e for e, c in enumerate(chosen[k]) if c == -1]
            edge = max(candidates, key=lambda e: (score[e], -e))
            chosen[k][edge] = int(np.argmax(probs[edge])) + 1
            for node in range(4):
                node_edges = [e for e, (n, _) in enumerate(space.edges) if n == node]
                if sum(chosen[k][e] > 0 for e in node_edges) >= 2:
                    for e in node_edges:
                        chosen[k][e] = 0 if chosen[k][e] == -1 else chosen[k][e]

    for epoch in range(4):
        if epoch:
            m.on_epoch_start(epoch, 50)
            decide()
            for g in w_opt.param_groups:
                g["lr"] = reference_cosine(epoch, 50, 0.025, 0.001)
        for t in range(2):
            (x, y), (xv, yv) = batch(10 * epoch + 2 * t), batch(10 * epoch + 2 * t + 1)
            m.device_step((x, y), (xv, yv))
            a_opt.zero_grad()
            F.cross_entropy(ref(xv, mixing()), yv).backward()
            a_opt.step()
            w_opt.zero_grad()
            F.cross_entropy(ref(x, {k: w.detach() for k, w in mixing().items()}), y).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
            w_opt.step()
    got = {k: [s if s >= 0 else (0 if s == -2 else -1) for s in m.selected[k]] for k in order}
    assert got == chosen and sum(c > 0 for k in order for c in chosen[k]) == 6
    for k in order:
        alphas[k].data.copy_(torch.stack(rows[k]))
    assert_same_state(sup, ref, m, alphas)


def test_rsps_step_equals_the_reference_step():
    """Issue 23, "also build": AutoDL ``RANDOM-NAS.py::search_func`` restated in float64 on NB201: per step one op
    per edge, the network run with ``forward_dynamic`` (only the sampled ops are computed), the train loss backward,
    the norm of all parameters clipped to 5, SGD with Nesterov momentum and decay 5e-4. Under the PyTorch 1.x the
    reference ran on, ``zero_grad`` zeroes an existing gradient, so an op off this step's path still gets decay and
    momentum once it has been sampled; the restatement starts with every op sampled before (nasrun decays an op from
    the first step; README). The path is nasrun's uniform draw, read from the method. Four steps agree to 1e-12."""
    from nasrun.spaces.nb201 import EDGES, MAX_NODES, SearchCell

    _, _, sup, m = preset_method(["+experiment=rsps_nb201"])
    g = m.w_opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"], m.grad_clip, m.lr_offset) == (0.025, 0.9, True, 5e-4, 5, 0)
    m.on_epoch_start(100, 250)
    assert g["lr"] == pytest.approx(reference_cosine(100, 250, 0.025, 0.001, offset=0), rel=1e-12)
    m._sampled = {k: v.double() for k, v in m._sampled.items()}  # the method's device buffers in float64 too
    ref, _, w_opt, _ = reference_twin(sup, m)
    for p in ref.parameters():
        p.grad = torch.zeros_like(p)

    def forward_dynamic(x, path):
        x = ref.stem(x)
        for cell in ref.cells:
            if isinstance(cell, SearchCell):
                nodes = [x]
                for i in range(1, MAX_NODES):
                    nodes.append(sum(cell.edges[f"{i}<-{j}"][path[EDGES.index(f"{i}<-{j}")]](nodes[j]) for j in range(i)))
                x = nodes[-1]
            else:
                x = cell(x)
        return ref._head(x)

    paths = set()
    for t in range(4):
        x, y = batch(t)
        torch.manual_seed(t)
        m.prepare_step()
        path = m._sampled["normal"].argmax(-1).tolist()
        assert m._sampled["normal"].sum(-1).eq(1).all()
        paths.add(tuple(path))
        m.device_step((x, y), None)
        w_opt.zero_grad(set_to_none=False)  # PyTorch 1.x: existing gradients zeroed, not dropped
        F.cross_entropy(forward_dynamic(x, path), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        w_opt.step()
    assert len(paths) == 4
    for p, q in zip(sup.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)


def drnas_reference_weights(alphas, masks):
    """DrNAS ``utils.process_step_matrix(α, 'dirichlet', mask)``: one Dir(ELU(α_e) + 1) draw per row, normal rows then
    reduce rows; after pruning the row is masked and renormalised."""
    out = {}
    for k in ("normal", "reduce"):
        rows = []
        for e, line in enumerate(alphas[k]):
            w = torch.distributions.Dirichlet(F.elu(line) + 1).rsample()
            if masks is not None:
                kept = torch.zeros_like(w)
                kept[masks[k][e]] = w[masks[k][e]]
                w = kept / kept.sum()
            rows.append(w)
        out[k] = torch.stack(rows)
    return out


def test_drnas_darts_space_progressive_step_equals_the_reference_step():
    """Issue 23, "also build": DrNAS's DARTS-space ``train_search.py`` (progressive) restated in float64, partial
    channels K=6, 7 ops, no BN after the search pools. From epoch 10 of a stage each iteration takes the α step first
    (Adam 6e-4, decay 1e-3, on the valid loss at a Dirichlet draw), then zeroes both optimisers, the train loss at a
    fresh draw, the weights' norm clipped to 5 (α is not a model parameter), SGD. At the stage change ``prune`` keeps
    each edge's 4 largest α and sets the others' α to 0, and every later draw is masked and renormalised. The stage
    keeps K here (widening draws its own channel maps, tested in tests/test_progressive.py); the reference's PyTorch
    1.x still decays the pruned ops' weights, which nasrun no longer computes: those are left out of the comparison.
    Weights, α and the masks agree to 1e-12 over two iterations in each stage, and the genotypes are the same."""
    _, space, sup, m = preset_method(["+experiment=drnas_darts", "space=darts_7op", "space.C=12", "space.layers=3",
                                  "method.stage_partial_channels=[6,6]"])
    assert (m.arch_opt.param_groups[0]["lr"], m.arch_opt.param_groups[0]["weight_decay"]) == (6e-4, 1e-3)
    assert m.grad_clip_scope == "weights" and m.arch_first and m.lr_offset == 0
    m.on_epoch_start(12, 50)
    sup.on_epoch_start(12, 50)
    assert m.train_arch
    ref, alphas, w_opt, a_opt = reference_twin(sup, m)
    masks = None
    for epoch in (12, 35):
        if epoch == 35:
            m.on_epoch_start(epoch, 50)
            assert m.stage == 1 and m.train_arch
            with torch.no_grad():  # the reference's prune(α, 4, None)
                masks = {}
                for k, a in alphas.items():
                    src, index = a.topk(4, dim=-1)
                    a.copy_(torch.zeros_like(a).scatter(1, index, src))
                    masks[k] = torch.zeros_like(a, dtype=torch.bool).scatter(1, index, True)
            assert all(torch.equal(masks[k], m.op_mask[k]) for k in masks)
            for g in w_opt.param_groups:
                g["lr"] = m.w_opt.param_groups[0]["lr"]  # the restarted cosine (pinned in tests/test_presets.py)
        for t in range(2):
            (x, y), (xv, yv) = batch(2 * t + epoch), batch(2 * t + epoch + 1)
            torch.manual_seed(epoch + t)
            m.device_step((x, y), (xv, yv))
            torch.manual_seed(epoch + t)
            a_opt.zero_grad()
            F.cross_entropy(ref(xv, drnas_reference_weights(alphas, masks)), yv).backward()
            a_opt.step()
            w_opt.zero_grad()
            a_opt.zero_grad()
            F.cross_entropy(ref(x, {k: w.detach() for k, w in drnas_reference_weights(alphas, masks).items()}), y).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
            w_opt.step()
    pruned = {f"cells.{i}.ops.{e}.{o}." for i, cell, k in sup.search_cells() for e in range(len(cell.ops))
              for o in range(len(cell.ops[e])) if not masks[k][e, o]}
    compared = 0
    for (name, p), q in zip(sup.named_parameters(), ref.parameters()):
        if not any(name.startswith(s) for s in pruned):
            assert torch.allclose(p, q, rtol=0, atol=1e-12), name
            compared += 1
    assert compared > 10 and pruned
    for k in alphas:
        assert torch.allclose(m.alphas[k], alphas[k], rtol=0, atol=1e-12), k
    genotype = space.derive(m.derive_weights())
    for k in alphas:  # the reference's genotype(): _parse of the masked softmax (renormalised over the kept ops)
        w = F.softmax(alphas[k].detach(), -1) * masks[k]
        w = (w / w.sum(-1, keepdim=True)).tolist()
        gene, start = [], 0
        for n in range(2, 6):
            rows = w[start:start + n]
            for j in sorted(range(n), key=lambda j: -max(rows[j]))[:2]:
                best = max(range(len(rows[j])), key=lambda o: (rows[j][o], -o))
                gene.append((space.op_names(k)[start + j][best], j))
            start += n
        assert list(getattr(genotype, k)) == gene, k


@pytest.mark.parametrize("eta", [0.1, 300.0], ids=["preset", "floor"])
def test_gaea_nb201_step_equals_the_reference_step(eta):
    """Issue 23, "also build": GAEA DARTS on NB201 (liamcli/gaea_release ``train_search.py::train`` with
    ``architect_edarts.py``) restated in float64: α starts at normalize(ones) and mixes the ops directly; each
    iteration zeroes the gradients, takes the valid loss (ERM: a second training batch), multiplies α by
    exp(−η∇α), clamps at 1e-5 and renormalises each row; then the train loss at the new α, the weights' norm clipped
    to 5 (α is not a model parameter), SGD with plain momentum, wd 3e-4, lr on a cosine over 50 epochs (stepped after
    each epoch). η = 300 drives entries onto the 1e-5 floor. Weights and α agree to 1e-12 after three iterations."""
    _, _, sup, m = preset_method(["+experiment=gaea_nb201_erm", f"method.arch_lr={eta}"], spread=None)
    assert m.single_level and m.grad_clip_scope == "weights" and m.arch_grad_clip is None and m.entropic_reg == 0
    assert torch.equal(m.alphas["normal"], torch.full((6, 4), 0.25, dtype=torch.float64))
    m.on_epoch_start(7, 25)
    assert m.w_opt.param_groups[0]["lr"] == pytest.approx(reference_cosine(7, 50, 0.025, 0.001, offset=0), rel=1e-12)
    ref, alphas, w_opt, _ = reference_twin(sup, m)
    alpha = alphas["normal"]
    for t in range(3):
        (x, y), (xv, yv) = batch(2 * t), batch(2 * t + 1)
        m.device_step((x, y), (xv, yv))
        w_opt.zero_grad()
        (grad,) = torch.autograd.grad(F.cross_entropy(ref(xv, {"normal": alpha}), yv), [alpha])
        with torch.no_grad():
            new = (alpha * torch.exp(-eta * grad)).clamp(min=1e-5)
            alpha.copy_(new / new.sum(-1, keepdim=True))
        w_opt.zero_grad()
        F.cross_entropy(ref(x, {"normal": alpha.detach()}), y).backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        w_opt.step()
    if eta > 1:
        assert (alpha <= 1.0001e-5).any()
    assert_same_state(sup, ref, m, alphas)
