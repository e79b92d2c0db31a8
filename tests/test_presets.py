"""Presets and rules pinned to the reference code they follow (issue 12): the expected numbers come from
re-running each reference's own schedule formula, not from nasrun."""

import pytest
import torch
import torch.nn.functional as F

from nasrun.config import build

from .conftest import make_cfg, tiny_space


def preset_method(experiment, *overrides):
    """The method of a preset, on the preset's space at tiny width (every method key as the preset sets it)."""
    full = make_cfg([f"+experiment={experiment}"], tiny=False)
    cfg = make_cfg([f"+experiment={experiment}", *tiny_space(full.space.name), "dataset=synthetic",
                    "trainer.device=cpu", *overrides], tiny=False)
    space = build(cfg.space)
    return cfg, build(cfg.method, supernet=space.build_supernet(4), space=space)


def reference_cnnmul(epochs=50, c_start=0.8, temp=7e-4):
    """SmoothDARTS/sota/cnnmul/train_search.py: (C, step temperatures [smooth, sparse]) of each epoch."""
    C, warmup, out = c_start, 0, []
    for epoch in range(epochs):
        if epoch >= warmup:
            C += (1 - c_start + 0.1) / (epochs - warmup)
        out.append((C, [temp * 10, temp]))
    return out


def reference_mf(epochs=50):
    """SP-DARTS/train_search_mf.py (DARTS space): temp=1, C=0, warmup=1; temp=1e-3, C += 1/(E-1) after it."""
    temp, C, warmup, out = 1, 0, 1, []
    for epoch in range(epochs):
        if epoch >= warmup:
            temp = 0.001
            C += 1 / (epochs - warmup)
        out.append((C, [temp * 10, temp]))
    return out


def reference_nb201_c100(epochs=50):
    """AutoDL-Projects_sp/exps/algos/DARTS-V1-100.py: warm-up 1, t 1.3e-3 and C += 0.9/49 until epoch 44,
    then t 6e-4 with C kept."""
    C, warmup, temp, out = 0, 1, None, []
    for epoch in range(epochs):
        if epoch >= warmup:
            if epoch >= 45:
                temp = 0.0006
            else:
                temp = 0.0013
                C += 0.9 / (50 - warmup)
        out.append((C, temp))
    return out


@pytest.mark.parametrize("i, t_sp", [(1, 7e-4), (2, 6e-4), (3, 5e-4), (4, 4e-4)])
def test_sp_darts_s1_s4_follow_the_cnnmul_reference(i, t_sp):
    cfg, m = preset_method(f"sp_darts_s{i}")
    assert (cfg.trainer.batch_size, cfg.trainer.epochs) == (128, 50)
    g = m.w_opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.025, 0.9, False, 3e-4)
    assert m.arch_opt.param_groups[0]["weight_decay"] == 0 and m.arch_first
    for epoch, (C, temps) in enumerate(reference_cnnmul(temp=t_sp)):
        m.on_epoch_start(epoch, 50)
        assert not m.warm and m.lrs()["w_lr"] == 0.025
        assert m.p == pytest.approx(C, abs=1e-12), epoch
        # the step temperature: softmax_list[rand < C]; with p ≥ 1 every step is sparse
        assert (m.t_sp * m.sm_factor, m.t_sp) == pytest.approx(temps)
    assert reference_cnnmul()[33][0] >= 1 > reference_cnnmul()[32][0]


def test_sp_darts_s1_mixes_the_w_step_with_softmax_of_softmax():
    _, m = preset_method("sp_darts_s1")
    with torch.no_grad():
        for a in m.arch_parameters():
            a.normal_(0, 1e-3)
    seen = []
    original = m.loss
    m.loss = lambda x, y, w, **kw: (seen.append({k: v.detach().clone() for k, v in w.items()}), original(x, y, w, **kw))[1]
    g = torch.Generator().manual_seed(0)
    batch = lambda: (torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g))  # noqa: E731
    m.on_epoch_start(40, 50)  # p ≥ 1: the sparse temperature
    alphas = {k: a.detach().clone() for k, a in m.alphas.items()}
    m.step(batch(), batch())
    arch_w, weight_w = seen[0], seen[1]  # α step first (architect.step), then the w step
    for k, a in alphas.items():
        assert torch.allclose(arch_w[k], F.softmax(a / 7e-4, dim=-1))
        assert torch.allclose(weight_w[k], F.softmax(F.softmax(m.alphas[k].detach(), -1) / 7e-4, dim=-1))
    assert not torch.allclose(weight_w["normal"], arch_w["normal"], atol=1e-3)  # the two rules do differ here


def test_sp_darts_monitor_follows_t_sp():
    _, m = preset_method("sp_darts_s3", "method.t_sp=4e-4")
    seen = []
    m.loss = (lambda original: lambda x, y, w, **kw: (seen.append(w), original(x, y, w, **kw))[1])(m.loss)
    m.on_epoch_start(10, 50)
    g = torch.Generator().manual_seed(0)
    m.step(*[(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)])
    assert torch.allclose(seen[-1]["reduce"], F.softmax(m.alphas["reduce"].detach() / 4e-5, dim=-1))


def test_sp_darts_darts_follows_train_search_mf():
    cfg, m = preset_method("sp_darts_darts")
    g = m.w_opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["nesterov"], g["weight_decay"]) == (0.05, 0.9, False, 3e-4)
    assert cfg.trainer.batch_size == 80 and m.arch_first and m.arch_opt.param_groups[0]["weight_decay"] == 0
    for epoch, (C, temps) in enumerate(reference_mf()):
        m.on_epoch_start(epoch, 50)
        assert m.p == pytest.approx(C, abs=1e-12), epoch
        if epoch == 0:  # C = 0: every warm-up step at softmax_list[0] = 10
            assert m.warm and m.warmup_factor * m.t_sp == pytest.approx(temps[0])
        else:
            assert not m.warm and (m.sm_factor * m.t_sp, m.t_sp) == pytest.approx(temps)


def test_sp_late_switch_follows_the_cifar100_script():
    _, m = preset_method("sp_darts_nb201_c100", "method.late_epoch=45", "method.late_t_sp=6e-4",
                         "method.schedule_offset=1")
    for epoch, (C, temp) in enumerate(reference_nb201_c100()):
        m.on_epoch_start(epoch, 50)
        assert m.p == pytest.approx(C, abs=1e-12), epoch
        if temp is not None:
            assert m.t_sp == pytest.approx(temp)


class EVLocalAvgOracle:
    """RobustDARTS's EVLocalAvg (src/search/utils.py; the same class in SS-DARTS's exps/algos/utils_ES.py), re-stated
    from its update/early_stop rules: local averages of the eigenvalues, epoch offsets in units of ev_freq."""

    def __init__(self, window=5, ev_freq=2, epochs=50):
        self.window, self.ev_freq, self.epochs = window, ev_freq, epochs
        self.ev, self.la, self.la_epochs, self.start = [], [], {}, 0

    def update(self, epoch, ev):
        self.ev.append(ev)
        half = -(-self.window // 2)
        if len(self.ev) >= half and epoch < self.epochs - 1:
            if len(self.ev) < self.window:
                self.la.append(sum(self.ev) / len(self.ev))
            else:
                chunk = self.ev[self.start:self.start + self.window]
                self.la.append(sum(chunk) / len(chunk))
                self.start += 1
            self.la_epochs[epoch] = epoch - self.ev_freq * (self.window // 2)
        elif len(self.ev) < half:
            self.la_epochs[epoch] = -1

    def early_stop(self, epoch, factor, es_start_epoch, delta):
        target = self.la_epochs[epoch] - self.ev_freq * delta
        if target >= es_start_epoch and self.la[-1] / self.la[-1 - delta] > factor:
            return target
        return None


def oracle_stop(evs, every, es_start_epoch, epochs=50):
    tracker = EVLocalAvgOracle(epochs=epochs)
    for epoch in range(epochs - 1):  # neither reference checks the rule at the last epoch
        if epoch % every == 0:
            tracker.update(epoch, evs[epoch])
            stop = tracker.early_stop(epoch, 1.3, es_start_epoch, 4)
            if stop is not None:
                return stop
    return None


@pytest.mark.parametrize("experiment, every, es_start", [("darts_es_nb201", 1, 0), ("rdarts_s1", 2, 10),
                                                         ("rdarts_s3", 2, 10)])
def test_darts_es_presets_stop_where_the_reference_tracker_does(experiment, every, es_start):
    from nasrun.stops import replay

    cfg = make_cfg([f"+experiment={experiment}"], tiny=False)
    assert cfg.diagnostics.hessian_every == every and cfg.stop.start_epoch == es_start
    rule = build(cfg.stop)
    g = torch.Generator().manual_seed(0)
    fired = 0
    for trial in range(200):
        growth = 1 + 0.15 * torch.rand((), generator=g).item()  # some runs grow fast enough to stop, some do not
        evs = [0.05 * growth ** e * (1 + 0.3 * torch.rand((), generator=g).item()) for e in range(50)]
        history = [{"epoch": e, "hessian_eigenvalue": evs[e] if (e % every == 0 or e == 49) else None}
                   for e in range(50)]
        expected = oracle_stop(evs, every, es_start)
        assert replay(rule, history, 50) == expected, trial
        fired += expected is not None
    assert 20 < fired < 180


def test_robustdarts_presets_settings_and_the_ada_variant():
    for i in range(1, 5):
        cfg, m = preset_method(f"rdarts_s{i}")
        g = m.w_opt.param_groups[0]
        assert (g["momentum"], g["nesterov"], g["weight_decay"]) == (0.9, False, 3e-4) and m.unrolled and m.arch_first
        assert (cfg.trainer.batch_size, cfg.trainer.epochs, cfg.space.name, cfg.stop.name) == (64, 50, f"darts_s{i}",
                                                                                               "darts_es")
        assert m.arch_opt.param_groups[0]["weight_decay"] == 1e-3
        m.on_epoch_start(25, 50)
        assert m.lrs()["w_lr"] == pytest.approx(0.001 + (0.025 - 0.001) * 0.5)
    ada = make_cfg(["+experiment=rdarts_s2", "stop=darts_ada"], tiny=False)
    assert ada.stop.name == "darts_ada" and ada.stop.mul_factor == 10 and ada.stop.max_weight_decay == 0.03
    es = make_cfg(["+experiment=darts_es_nb201"], tiny=False)
    assert (es.method.w_lr, es.method.w_lr_min, es.method.w_nesterov, es.trainer.batch_size) == (0.015, 0.015, True, 128)


@pytest.mark.parametrize("experiment", ["darts_v1_cifar10", "darts_v2_cifar10"])
def test_quark0_presets_run_epoch_e_at_the_schedulers_next_value(experiment):
    """quark0 train_search.py: ``scheduler.step(); lr = scheduler.get_lr()[0]`` at the top of each epoch, with
    torch's CosineAnnealingLR(T_max=50, eta_min=0.001); that lr is the SGD lr and the ξ of the unrolled step."""
    import warnings

    _, m = preset_method(experiment)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.025, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50.0, eta_min=0.001)
    for epoch in range(50):
        with warnings.catch_warnings():  # stepping the scheduler before the optimiser is quark0's order
            warnings.simplefilter("ignore")
            scheduler.step()
        m.on_epoch_start(epoch, 50)
        assert m.lrs()["w_lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), epoch
    assert m.lrs()["w_lr"] == pytest.approx(0.001)  # the last epoch already runs at eta_min
    _, autodl = preset_method("darts_v1_nb201")
    autodl.on_epoch_start(0, 50)
    assert autodl.lrs()["w_lr"] == 0.025


def reference_rt_epoch(raw, k):
    """SS-DARTS DARTS-V1.py, DARTS+ criterion two: ``temp.argsort(axis=1)`` of the raw α each epoch, rank_retain
    from 1, +1 while unchanged, reset to 1 on a change; rt_k = the first epoch where rank_retain == k."""
    import numpy as np

    rank_retain, before = 1, None
    for epoch, a in enumerate(raw):
        current = np.asarray(a).argsort(axis=1)
        if epoch == 0:
            before = current
            continue
        if (current == before).all():
            rank_retain += 1
        else:
            rank_retain, before = 1, current
        if rank_retain == k:
            return epoch
    return None


def test_darts_plus_rt_ranks_the_raw_alpha_as_ss_darts_does():
    """Tiny ops (α ≈ −12, softmax ≈ 1e-6) tie once the softmax is rounded to 5 decimals, while their raw α keep
    changing order: the rule must follow the raw α."""
    from nasrun.stops import DartsPlus, replay

    rule = DartsPlus(criterion="rt", k=4)
    g = torch.Generator().manual_seed(0)
    differs = 0
    for trial in range(100):
        a = torch.tensor([[-12.0, -12.00001, 0.3, 0.9, -12.00002]]).repeat(6, 1)
        raw = []
        for _ in range(30):
            swap = torch.rand(6, 5, generator=g) < 0.04  # now and then two tiny ops trade places
            a = a + swap * 3e-5 * torch.randn(6, 5, generator=g)
            raw.append(a.clone())
        history = [{"epoch": e, "alpha": {"normal": [[round(x, 5) for x in row] for row in F.softmax(r, -1).tolist()]},
                    "alpha_raw": {"normal": r.tolist()}} for e, r in enumerate(raw)]
        expected = reference_rt_epoch([r.numpy() for r in raw], 4)
        assert replay(rule, history, 50) == expected, trial
        rounded = [{"epoch": h["epoch"], "alpha": h["alpha"]} for h in history]
        differs += replay(rule, rounded, 50) != expected
    assert differs > 10  # the rounded softmax would have stopped elsewhere in many of these runs


def test_all_skip_abort_ends_the_search_without_rollback(tmp_path):
    from nasrun.search import choose
    from nasrun.selectors.argmax import ArgmaxSelector
    from nasrun.selectors.selective_stop import SelectiveStop
    from nasrun.spaces import get_space
    from nasrun.stops import AllSkipAbort, replay

    space = get_space("nb201", C=4, N=1)
    ops = space.ops
    genotype = lambda op: space.format_genotype(space.parse_genotype(  # noqa: E731
        f"|{op}~0|+|{op}~0|{op}~1|+|{op}~0|{op}~1|{op}~2|"))
    skips = [2, 4, 6, 5, 6]
    mags = [{o: (0.5 if (o == "nor_conv_3x3") else 0.1) * (1 + e if e < 2 else 3 - e) for o in ops} for e in range(5)]
    history = [{"epoch": e, "skip_count": s, "genotype": genotype("skip_connect" if s == 6 else "nor_conv_3x3"),
                "op_magnitude": mags[e]} for e, s in enumerate(skips)]
    rule = build(make_cfg(["stop=all_skip"], tiny=False).stop)
    assert isinstance(rule, AllSkipAbort) and replay(rule, history, 50) == 2
    (label, g), = choose(None, space, None, history, ArgmaxSelector(), rule, 2)
    assert label == "all_skip" and space.format_genotype(g) == genotype("skip_connect")  # SS's "last-geno"
    picked = choose(None, space, None, history, SelectiveStop(criteria=["peak"]), rule, 2)
    assert picked[0][0] == "peak_nor_conv_3x3@1"  # the peak before the abort (epoch 3 was never run)
    summary = run_search_tiny(tmp_path, ["stop=all_skip", "stop.skip_count=0", "trainer.epochs=3"])
    assert summary["stop_epoch"] == 0 and summary["epochs_run"] == 1


def run_search_tiny(tmp_path, overrides):
    from nasrun.search import run_search

    return run_search(make_cfg(overrides), tmp_path)
