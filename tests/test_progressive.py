"""DrNAS's progressive search (issue 14): partial channels on NB201, op pruning, net2wider widening, the stage
schedule and resume, each against an independent computation."""

import math

import pytest
import torch
import torch.nn.functional as F

from nasrun.config import build
from nasrun.errors import UserError
from nasrun.spaces.fused import set_fused

from .conftest import make_cfg, tiny_method

STAGES = ["method.stage_epochs=[2,2]", "method.stage_partial_channels=[4,2]", "method.stage_keep=[5,3]",
          "space.partial_channels=4", "trainer.epochs=4"]


def progressive(overrides=(), C=8):
    """A two-stage DrNAS (K 4 → 2, 5 → 3 ops) on a float64 supernet of width C, α away from uniform."""
    nb201 = not any(o.startswith("space=darts") for o in overrides)
    return tiny_method(["method=drnas", *STAGES, f"space.C={C}", *(["space.track_running_stats=true"] if nb201 else []),
                        *overrides], dtype=torch.float64)


def test_nb201_partial_channel_edge():
    """An NB201 edge with K=2 equals shuffle(cat(Σ_o w_o·op_o(x[:, :C/2]), (Σ_o w_o)·x[:, C/2:])), the shuffle written
    as an index map (output channel c reads (c mod K)·C/K + c div K), as DrNAS's NAS201SearchCell_PartialChannel."""
    from nasrun.spaces import get_space

    sup = get_space("nb201", C=8, N=1, partial_channels=2).build_supernet(4).double()
    cell = sup.cells[0]
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    w = F.softmax(torch.randn(5, dtype=torch.float64), 0)
    with torch.no_grad():
        ops = cell.edges["1<-0"]
        assert {m.in_channels for op in ops for m in op.modules() if isinstance(m, torch.nn.Conv2d)} == {4}
        joined = torch.cat([sum(wo * op(x[:, :4]) for wo, op in zip(w, ops)), x[:, 4:]], dim=1)
        index = torch.tensor([(c % 2) * 4 + c // 2 for c in range(8)])
        assert torch.allclose(cell._edge(0, x, w), joined[:, index])
        hard = torch.cat([ops[3](x[:, :4]) * w[3] + (w.sum() - w[3]), x[:, 4:]], dim=1)  # GDAS: op 3 alone
        assert torch.allclose(cell._edge(0, x, w, index=3), hard[:, index])
        full = get_space("nb201", C=8, N=1).build_supernet(4).double()
        img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        assert full(img, {"normal": w.expand(6, 5)}).shape == sup(img, {"normal": w.expand(6, 5)}).shape == (2, 4)


def test_pruning_keeps_the_largest_alpha_masks_renormalises_and_skips_the_pruned_ops():
    _, sup, m = progressive()
    alpha = m.alphas["normal"].detach().clone()
    m.enter_stage(1)
    mask = m.op_mask["normal"]
    for row, a in zip(mask, alpha):  # the three largest α of every edge, by sorting
        assert set(row.nonzero().flatten().tolist()) == set(sorted(range(5), key=lambda o: -a[o].item())[:3])
    w = m.edge_weights()["normal"]  # a Dirichlet sample, zero on the pruned ops, renormalised
    assert torch.equal(w[~mask], torch.zeros((~mask).sum(), dtype=w.dtype))
    assert torch.allclose(w.sum(-1), torch.ones(6, dtype=w.dtype))
    d = m.derive_weights()["normal"]  # softmax over the kept ops only: exp(α_o) / Σ_kept exp(α)
    e = alpha.exp() * mask
    assert torch.allclose(d, e / e.sum(-1, keepdim=True))
    kept = {(r, o) for r in range(6) for o in range(5) if mask[r, o]}
    calls = {}
    planned = set()
    for cell in [c for _, c, _ in sup.search_cells()]:
        where = {id(op): (r, o) for r, edge in enumerate(cell.edges.values()) for o, op in enumerate(edge)}
        planned |= {where[id(m)] for plan in cell.sources.plans for term in plan.terms for m in term.modules}
        for r, edge in enumerate(cell.edges.values()):
            for o, op in enumerate(edge):
                op.register_forward_hook(lambda *a, key=(r, o): calls.__setitem__(key, calls.get(key, 0) + 1))
    assert planned == {(r, o) for r, o in kept if o != 0}  # the fused plans hold the kept ops (`none`, op 0: never)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        fused = sup(x, {"normal": w})
        set_fused(sup, False)
        skipped = sup(x, {"normal": w})  # the per-op cell, edge by edge
        ran = set(calls)
        sup.set_active_ops(None)
        computed = sup(x, {"normal": w})
        set_fused(sup, True)
    assert torch.allclose(fused, skipped, rtol=1e-10, atol=1e-12)
    assert ran == kept
    assert torch.allclose(skipped, computed)
    m.enter_stage(1)  # a later pruning ranks only the ops still in
    assert torch.equal(m.op_mask["normal"], mask)


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_widening_copies_channels_net2wider_with_the_momentum(space_name):
    """K 4 → 2: every grown dimension of an op holds the old channels first, then copies of old ones; a conv's
    output channel and its BN's statistics are copies of the same old channel (factorized reduce: each half
    follows its conv); the SGD momentum is widened exactly as its parameter."""
    extra = ["space=darts", "space.layers=3", "method.stage_keep=[8,3]"] if space_name == "darts" else []
    _, sup, m = progressive(extra)
    with torch.no_grad():
        for mod in sup.modules():
            if isinstance(mod, torch.nn.BatchNorm2d) and mod.running_mean is not None:
                mod.running_mean.copy_(torch.randn_like(mod.running_mean))
    m.w_opt.zero_grad()
    for p in m.w_opt.param_groups[0]["params"]:
        m.w_opt.state[p]["momentum_buffer"] = 3 * p.detach().clone()
    old = {n: t.detach().clone() for n, t in sup.state_dict().items()}
    m.enter_stage(1)
    new = sup.state_dict()
    assert int(new["partial_channels"]) == 2
    grown = [n for n in old if old[n].shape != new[n].shape]
    assert grown and all(".edges." in n or ".ops." in n for n in grown)
    reduce_bns = {n.replace("conv_1.weight", "bn.") for n in grown if n.endswith("conv_1.weight")}
    for n in grown:
        o, w = old[n], new[n]
        if any(n.startswith(b) for b in reduce_bns):  # [conv_1 | conv_2], each half with its old channels first
            a, b = o.shape[0] // 2, w.shape[0] // 2
            assert torch.equal(w[:a], o[:a]) and torch.equal(w[b:b + a], o[a:]), n
            continue
        assert torch.equal(w[tuple(slice(0, s) for s in o.shape)], o), n  # the old channels first
    convs = [n for n in grown if n.endswith("weight") and new[n].dim() == 4]
    checked = 0
    for n in convs:
        o, w = old[n], new[n]
        rows = [next(i for i in range(o.shape[0]) if torch.equal(w[j, :o.shape[1]], o[i, :o.shape[1]]))
                for j in range(w.shape[0])]  # the old channel each new output channel copies
        prefix, slot, _ = n.rsplit(".", 2)
        bn = f"{prefix}.{int(slot) + 1}.running_mean" if slot.isdigit() else None
        if bn in new and new[bn].shape[0] == w.shape[0]:  # ReLUConvBN / DilConv's last conv: the BN follows it
            assert torch.equal(new[bn], old[bn][rows]), n
            checked += 1
        if n.endswith(("conv_1.weight", "conv_2.weight")):  # factorized reduce: BN = [conv_1 | conv_2]
            h, second = w.shape[0], n.endswith("conv_2.weight")
            bn_new, bn_old = new[f"{prefix}.bn.running_mean"], old[f"{prefix}.bn.running_mean"]
            assert torch.equal(bn_new[h * second:h * (second + 1)], bn_old[[o.shape[0] * second + r for r in rows]])
            checked += 1
    assert checked
    params = m.w_opt.param_groups[0]["params"]
    assert [id(p) for p in params] == [id(p) for p in sup.parameters()]
    assert set(m.w_opt.state) <= set(params)
    for p in params:
        assert torch.equal(m.w_opt.state[p]["momentum_buffer"], 3 * p.detach())


def reference_lrs(total, stages, lr0=0.025, lr_min=0.001):
    """DrNAS train_search_progressive.py with torch's own scheduler: SGD + CosineAnnealingLR over the whole run,
    stepped after every epoch; at a stage change a new SGD at lr0 and a new scheduler loaded with the old one's state."""
    import warnings

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr0, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(total), eta_min=lr_min)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, n in enumerate(stages):
            for _ in range(n):
                out.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
            if i < len(stages) - 1:
                opt = torch.optim.SGD([p], lr0, momentum=0.9)
                new = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(total), eta_min=lr_min)
                new.load_state_dict(sched.state_dict())
                sched = new
    return out


@pytest.mark.parametrize("restart", [True, False])
def test_stage_schedule_follows_the_reference(restart):
    """With stage_lr_restart the learning rate of every epoch is the one the reference's re-created SGD gets from
    torch's recursive cosine; without it, the cosine over the run. α steps start 2 epochs into each stage; the
    stage change happens once, at the first epoch of stage 2."""
    _, sup, m = progressive([f"method.stage_lr_restart={str(restart).lower()}", "method.arch_start_epoch=2",
                             "method.stage_epochs=[3,3]", "trainer.epochs=6"])
    lrs, arch = [], []
    for e in range(6):
        m.on_epoch_start(e, 6)
        lrs.append(m.w_opt.param_groups[0]["lr"])
        arch.append(m.train_arch)
        assert m.stage == (e >= 3) and int(sup.partial_channels) == (4 if e < 3 else 2)
    expected = (reference_lrs(6, [3, 3]) if restart else
                [0.001 + 0.024 * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)])
    assert lrs == pytest.approx(expected, rel=1e-12)
    if restart:
        assert lrs[3] == pytest.approx(0.025)
    assert arch == [False, False, True, False, False, True]


def test_second_order_darts_runs_progressively(tmp_path):
    """The unrolled step differentiates through every weight, the pruned ops' included (their gradient is zero)."""
    from nasrun.search import run_search

    summary = run_search(make_cfg(["method=darts", "method.unrolled=true", *STAGES]), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["method"]["stage"] == 1 and summary["genotype"]
    assert all(torch.isfinite(a).all() for a in state["method"]["alphas"].values())


def test_stage_settings_are_checked_before_training(tmp_path):
    from nasrun.search import run_search

    cases = [(["method.stage_partial_channels=[2,1]"], "space.partial_channels=2"),
             (["method.stage_keep=[4,3]"], "searches all 5 ops"),
             (["method.stage_keep=[5,3,4]", "method.stage_epochs=[1,1,2]", "method.stage_partial_channels=[4,2,2]"],
              "no more than the stage before"),
             (["method.stage_partial_channels=[4,3]"], "must divide"),
             (["method.stage_keep=[5]"], "one entry per stage"),
             (["trainer.epochs=5"], "sum to 4 but trainer.epochs=5"),
             (["space=nb1shot1_s1"], "nb201 or a DARTS-family space")]
    for extra, message in cases:
        base = [o for o in STAGES if not (o.startswith("space.") and "space=nb1shot1_s1" in extra)]
        cfg = make_cfg(["method=drnas", *base, *extra])
        with pytest.raises(UserError, match=message):
            run_search(cfg, tmp_path / "run")
        assert not (tmp_path / "run").exists()


def test_progressive_search_end_to_end_and_selection_from_its_checkpoint(tmp_path):
    """A two-stage DrNAS search on the DARTS space: the genotype uses only kept ops; `nasrun select` rebuilds the
    widened supernet from the checkpoint."""
    import json

    from nasrun.select import run_select

    cfg = make_cfg(["method=drnas", *STAGES, "space=darts", "space.layers=3", "method.stage_keep=[8,2]",
                    "method.arch_start_epoch=1"])
    summary = run_search(cfg, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["method"]["stage"] == 1 and int(state["supernet"]["partial_channels"]) == 2
    mask = state["method"]["op_mask"]
    assert genotype_ops_kept(build(cfg.space), summary["genotype"], mask)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["w_lr"] > 0 for r in lines] == [True] * 4
    out = run_select(make_cfg([f"run={tmp_path / 'run'}", "selector=argmax", "trainer.device=cpu"], config_name="select",
                              tiny=False), tmp_path / "select")
    assert out["genotype"] == summary["genotype"]


def run_search(cfg, path):
    from nasrun.search import run_search as run

    return run(cfg, path)


def genotype_ops_kept(space, genotype, mask):
    """Whether every op of a DARTS genotype is one its edge kept."""
    g = space.parse_genotype(genotype)
    for key, genes in (("normal", g.normal), ("reduce", g.reduce)):
        for k, (op, j) in enumerate(genes):
            e = space.edges.index((k // 2, j))
            if not mask[key][e, space.op_names(key)[e].index(op)]:
                return False
    return True


def test_argmax_and_pdarts_final_derive_among_the_kept_ops_whatever_alpha_of_the_pruned():
    from nasrun.selectors.pdarts_final import PdartsFinal

    space, _, m = progressive(["space=darts", "space.layers=3", "method.stage_keep=[8,3]"])
    m.enter_stage(1)
    with torch.no_grad():
        for k, a in m.alphas.items():
            a[~m.op_mask[k]] += 100.0  # the pruned ops now have the largest α
    mask = {k: v.cpu() for k, v in m.op_mask.items()}
    assert genotype_ops_kept(space, str(space.derive(m.derive_weights())), mask)
    [(_, g)] = PdartsFinal().select(space=space, method=m)
    assert genotype_ops_kept(space, str(g), mask)


@pytest.mark.slow  # a whole DARTS-space DrNAS search with DARTS-PT; the selector unit tests are in make test
def test_pt_projects_only_ops_the_progressive_search_kept(tmp_path):
    """DARTS-PT projects among the ops each edge kept (a pruned op was not trained in the last stage and is not
    computed); random sampling over all ops is refused."""
    # darts_7op, as darts-pt: with `none` a projection onto it leaves the DARTS rule an edge of zero weights
    cfg = make_cfg(["method=drnas", *STAGES, "space=darts_7op", "space.layers=3", "method.stage_keep=[7,2]",
                    "selector=pt", "selector.proj_intv=1", "selector.max_valid_batches=1"])
    summary = run_search(cfg, tmp_path / "run")
    mask = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["method"]["op_mask"]
    assert genotype_ops_kept(build(cfg.space), summary["genotype"], mask)
    with pytest.raises(UserError, match="prunes ops"):
        run_search(make_cfg(["method=drnas", *STAGES, "selector=random_ranking"]), tmp_path / "random")


def test_rolling_back_across_a_stage_change_restores_the_narrow_supernet():
    """A rollback (DARTS-ADA) to a state saved in stage 1 rebuilds the supernet at K=4 with all ops, from the saved
    values, and the stage change happens again at its epoch."""
    from nasrun.engine import cpu_copy

    _, sup, m = progressive()
    m.on_epoch_start(1, 4)
    saved = cpu_copy({"supernet": sup.state_dict(), "method": m.state_dict()})
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        before = sup(x, m.derive_weights())
    m.on_epoch_start(2, 4)
    assert m.stage == 1 and int(sup.partial_channels) == 2
    sup.load_state_dict(saved["supernet"])
    m.load_state_dict(saved["method"])
    assert m.stage == 0 and m.op_mask is None and int(sup.partial_channels) == 4
    assert all(c.active is None for _, c, _ in sup.search_cells())
    assert [id(p) for p in m.w_opt.param_groups[0]["params"]] == [id(p) for p in sup.parameters()]
    with torch.no_grad():
        assert torch.equal(sup(x, m.derive_weights()), before)
    m.on_epoch_start(2, 4)
    assert m.stage == 1 and int(sup.partial_channels) == 2
