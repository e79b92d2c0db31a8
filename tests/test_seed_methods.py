"""TSE-DARTS, Amended-DARTS, SP-DARTS, EX-DARTS, fixed α (methods.md §4.3-4.6, §5.2) against independent maths."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nasrun.cli import CONF_DIR
from nasrun.diagnostics import ies_entropy, tse_estimators
from nasrun.search import run_search
from nasrun.spaces import available_spaces

from .conftest import make_cfg, tiny_method

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def tiny(overrides, dtype=torch.float32, seed=0):
    _, sup, method = tiny_method(overrides, dtype, seed, arch_lr=1e-2)
    return sup, method


def batches(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [((torch.randn(8, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g)),
             (torch.randn(8, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g))) for _ in range(n)]


def test_tse_alpha_gradient_is_the_sum_of_direct_gradients_and_weights_follow_new_alpha():
    sup, method = tiny(["method=tse_darts", "method.inner_steps=3", "method.w_lr=0.1"])
    group = batches(3)
    method.weight_step(group[0][0])  # give the optimiser momentum state, which the rollout must copy
    w0, opt0 = copy.deepcopy(sup.state_dict()), copy.deepcopy(method.w_opt.state_dict())
    a0 = method.alphas["normal"].detach().clone()

    # independent: roll out a fresh copy, summing ∂L/∂α of every step
    shadow = copy.deepcopy(sup)
    opt = torch.optim.SGD(shadow.parameters(), lr=0.0)
    opt.load_state_dict(copy.deepcopy(opt0))
    alpha = a0.clone().requires_grad_()
    expected = torch.zeros_like(alpha)
    for (x, y), _ in group:
        opt.zero_grad()
        loss = F.cross_entropy(shadow(x, {"normal": F.softmax(alpha, -1)}), y)
        g_alpha, *g_w = torch.autograd.grad(loss, [alpha, *shadow.parameters()])
        expected += g_alpha
        for p, g in zip(shadow.parameters(), g_w):
            p.grad = g
        opt.step()

    seen = {}
    original = method.arch_opt.step
    method.arch_opt.step = lambda: (seen.setdefault("grad", method.alphas["normal"].grad.clone()), original())[1]
    method.step_group(group)
    assert torch.allclose(seen["grad"], expected, atol=1e-6)
    assert not torch.equal(method.alphas["normal"], a0)

    # the real weights: a fresh run of the same T steps from (w0, opt0) with the new α
    ref = copy.deepcopy(sup)
    ref.load_state_dict(w0)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.0)
    ref_opt.load_state_dict(opt0)
    new_alpha = method.alphas["normal"].detach()
    for (x, y), _ in group:
        ref_opt.zero_grad()
        F.cross_entropy(ref(x, {"normal": F.softmax(new_alpha, -1)}), y).backward()
        ref_opt.step()
    for (n, p), q in zip(sup.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    for k, st in method.w_opt.state_dict()["state"].items():
        assert torch.allclose(st["momentum_buffer"], ref_opt.state_dict()["state"][k]["momentum_buffer"], atol=1e-6)


def test_tse_groups_per_epoch_and_merge_flag(tmp_path):
    cfg = make_cfg(["method=tse_darts", "method.inner_steps=3", "trainer.epochs=1", "dataset.synthetic.n_train=224"])
    run_search(cfg, tmp_path / "a")  # 112 train images / batch 16 = 7 steps → groups 3, 3, 1
    rec = json.loads((tmp_path / "a" / "metrics.jsonl").read_text())
    assert rec["valid_loss"] is None and rec["tse"] == pytest.approx(rec["train_loss"])


def test_tse_merge_train_val_searches_on_one_shuffled_union(tmp_path):
    """rubinxin/TSE merge_train_val_supernet: train_split = train + valid, valid_split = the same union; the
    search loader shuffles the union, so an epoch has twice the steps and sees every image once."""
    from nasrun.search import build_search

    overrides = ["method=tse_darts", "method.inner_steps=3", "dataset.synthetic.n_train=224"]
    *_, plain_stream, _, _, _ = build_search(make_cfg(overrides), torch.device("cpu"))
    *_, stream, _, _, method = build_search(make_cfg(overrides + ["method.merge_train_val=true"]), torch.device("cpu"))
    assert (plain_stream.steps, stream.steps) == (7, 14)
    stream.start_epoch(0)
    seen = torch.cat([stream.tables[s]["t"] for s in range(stream.steps)])
    assert sorted(seen.tolist()) == list(range(224))  # both halves, each image once
    assert seen[:112].max() >= 112 and seen[:112].min() < 112  # one shuffled order, not train then valid
    assert set(stream.tables[0]["v"].tolist()) <= set(range(224))
    summary = run_search(make_cfg(overrides + ["method.merge_train_val=true", "trainer.epochs=1"]), tmp_path)
    rec = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert summary["epochs_run"] == 1 and rec["images_per_s"] > 0


@pytest.mark.parametrize("radius, tol", [(1e-7, 1e-4), (1e-8, 1e-4)])
def test_amended_finite_differences_match_exact_double_backprop(radius, tol):
    """Both central differences converge to double back-propagation (float64; at the reference radius
    0.01 a tiny ReLU/BN net is too rough for a tight bound, so the maths is checked at small radii)."""
    torch.set_default_dtype(torch.float64)
    try:
        sup, fd = tiny(["method=amended_darts", f"method.fd_radius={radius}"], torch.float64)
        (train, valid), = batches(1, torch.float64)
        names, params, _ = fd.functional_state()
        loss = F.cross_entropy(sup(valid[0], fd.edge_weights()), valid[1])
        g = torch.autograd.grad(loss, list(fd.arch_parameters()) + list(params))
        v = g[1:]
        z_fd, z_exact = fd.fd_term(train, v)[0], fd.exact_term(train, v)[0]
        assert z_exact.norm() > 0
        assert (z_fd - z_exact).norm() <= tol * z_exact.norm()
        # α.grad = g1 − η z
        grads, _, _ = fd.arch_grad(train, valid)
        assert torch.allclose(grads[0], g[0] - 0.1 * z_fd, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_amended_eta_and_exact_flags_change_the_gradient():
    outs = {}
    for flags in (["method.eta=0.1"], ["method.eta=0.5"], ["method.exact=true"]):
        _, m = tiny(["method=amended_darts", *flags])
        (train, valid), = batches(1)
        outs[flags[0]] = m.arch_grad(train, valid)[0][0]
    a, b, c = outs.values()
    assert not torch.allclose(a, b) and not torch.equal(a, c)


def test_sp_mixing_probability_schedule():
    _, m = tiny(["method=sp_darts"])
    E, iwp = 50, 1
    for e in range(E):
        expected = 0.0 if e < iwp else 0.0 + (1.0 - 0.0) * (e - iwp) / (E - iwp)
        assert m.mix_probability(e, E) == pytest.approx(expected)
    _, code = tiny(["method=sp_darts", "method.schedule_offset=1", "method.p_up=0.9"])
    assert code.mix_probability(1, E) == pytest.approx(0.9 / 49) and code.mix_probability(49, E) == pytest.approx(0.9)


def test_sp_late_switch_flags():
    _, m = tiny(["method=sp_darts", "method.late_epoch=45", "method.late_t_sp=6e-4", "method.p_up=0.9"])
    m.on_epoch_start(44, 50)
    assert m.t_sp == pytest.approx(1.1e-3) and m.p == pytest.approx(0.9 * 43 / 49)
    m.on_epoch_start(47, 50)  # p keeps epoch 44's value (the reference's C=C from epoch 45 on)
    assert m.t_sp == pytest.approx(6e-4) and m.p == pytest.approx(0.9 * 43 / 49)
    _, paper = tiny(["method=sp_darts", "method.p_up=0.9"])
    paper.on_epoch_start(47, 50)
    assert paper.t_sp == pytest.approx(1.1e-3) and paper.p == pytest.approx(0.9 * 46 / 49)


def test_sp_temperatures_per_step():
    _, m = tiny(["method=sp_darts", "method.t_sp=0.01", "method.sm_factor=11"])
    seen = []
    original = m.weight_step
    m.weight_step = lambda b: (seen.append(m.temperature), original(b))[1]
    m.on_epoch_start(0, 10)  # warm-up: 10·t_sp
    m.step(*batches(1)[0])
    m.p_low = m.p_up = 1.0
    m.on_epoch_start(5, 10)
    m.step(*batches(1)[0])
    m.p_low = m.p_up = 0.0
    m.on_epoch_start(6, 10)
    m.step(*batches(1)[0])
    assert seen == pytest.approx([0.1, 0.01, 0.11])
    w = m.edge_weights()["normal"]
    assert torch.allclose(w, F.softmax(m.alphas["normal"] / 0.11, -1))
    m.p_low, m.p_up = 0.3, 0.3
    m.on_epoch_start(7, 10)
    torch.manual_seed(0)
    draws = [bool(torch.rand(()) < 0.3) for _ in range(400)]
    torch.manual_seed(0)
    for _ in range(40):
        m.step(*batches(1)[0])
    assert m.epoch_metrics()["sparse_fraction"] == pytest.approx(sum(draws[:40]) / 40)


def test_ex_darts_preset_swaps_learning_rates():
    cfg = make_cfg(["method=ex_darts"])
    assert (cfg.method.w_lr, cfg.method.w_lr_min, cfg.method.arch_lr) == (3e-4, 3e-4, 0.025)
    darts = make_cfg(["method=darts"]).method
    assert (darts.w_lr, darts.arch_lr) == (cfg.method.arch_lr, cfg.method.w_lr) and cfg.method._target_ == darts._target_
    _, m = tiny(["method=ex_darts"])
    m.on_epoch_start(30, 50)
    assert m.lrs()["w_lr"] == 3e-4


def test_fixed_alpha_never_trains_alpha(tmp_path):
    run_search(make_cfg(["method=fixed_alpha"]), tmp_path)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["alpha"] == lines[1]["alpha"]


def test_diagnostics_formulas():
    w = {"normal": torch.tensor([[0.5, 0.5], [1.0, 0.0]])}
    assert ies_entropy(w) == pytest.approx(math.log(2))
    est = tse_estimators([3.0, 2.0, 1.0])
    assert est["tse"] == 6.0 and est["tse_e"] == 1.0 and est["tse_ema"] == pytest.approx((0.1 * 3 + 0.9 * 2) * 0.1 + 0.9)


# combinations whose maths does not apply, each refused in one line before training
UNSUPPORTED = {("rsps", "nb1shot1"): "cannot sample architectures uniformly",
               ("gdas", "nb1shot1"): "needs cells that can run one sampled op per edge",
               ("pc_darts", "nb1shot1"): "normalises edges over a node's inputs",
               ("sgas", "nb1shot1"): "decides edges of a cell", ("sgas_cri2", "nb1shot1"): "decides edges of a cell"}


@pytest.mark.slow  # the whole method × space matrix, about 2.5 minutes: `make test-slow` (in CI)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_one_epoch_on_every_space(method, tmp_path):
    run_every_space(method, tmp_path, available_spaces())


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_one_epoch_on_nb201(method, tmp_path):
    run_every_space(method, tmp_path, ["nb201"])


def run_every_space(method, tmp_path, spaces):
    from nasrun.errors import UserError

    for space in spaces:
        overrides = [f"method={method}", f"space={space}", "trainer.epochs=1", "dataset.synthetic.n_train=32"]
        if method == "tse_darts":
            overrides.append("method.inner_steps=2")
        refusal = next((why for (m, prefix), why in UNSUPPORTED.items() if m == method and space.startswith(prefix)), None)
        if refusal:
            with pytest.raises(UserError, match=refusal) as err:
                run_search(make_cfg(overrides), tmp_path / space)
            assert "\n" not in str(err.value) and space in str(err.value)
            assert not (tmp_path / space / "metrics.jsonl").exists()
            continue
        summary = run_search(make_cfg(overrides), tmp_path / space)
        assert Path(summary["run_dir"], "genotype.json").exists(), (method, space)
        record = json.loads((tmp_path / space / "metrics.jsonl").read_text())
        losses = [x for x in (record["train_loss"], record["valid_loss"]) if x is not None]
        assert record["train_loss"] is not None and all(math.isfinite(x) for x in losses), (method, space, losses)


def test_selectors_that_read_alpha_warn_when_it_is_never_trained(tmp_path, monkeypatch):
    """Issue 15 item 3: fixed_alpha / RSPS with argmax used to return the argmax of the initial α without a word."""
    import nasrun.search as search

    printed = []
    monkeypatch.setattr(search.console, "print", lambda *a, **k: printed.append(" ".join(map(str, a))))
    run_search(make_cfg(["method=fixed_alpha", "trainer.epochs=1"]), tmp_path / "a")
    assert any("method=fixed_alpha never trains α, so selector=argmax reads its initial values" in p for p in printed)
    printed.clear()
    run_search(make_cfg(["method=darts", "trainer.epochs=1"]), tmp_path / "b")
    assert not any("never trains" in p for p in printed)
