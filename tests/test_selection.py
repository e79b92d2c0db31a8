"""Stop rules, selective stop and the Hessian diagnostic (methods.md §4.9-4.10, §5.3, §6.1-6.2)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasrun.config import build
from nasrun.diagnostics import hessian_eigenvalue, operation_magnitudes
from nasrun.search import run_search
from nasrun.selectors.selective_stop import stop_epoch
from nasrun.errors import UserError
from nasrun.stops import DartsES, DartsPlus, SelectiveStopOnline, replay

from .conftest import make_cfg


def tiny_method():
    torch.manual_seed(0)
    cfg = make_cfg([])
    space = build(cfg.space)
    sup = space.build_supernet(4)
    method = build(cfg.method, supernet=sup, space=space)
    with torch.no_grad():
        method.alphas["normal"].normal_(0, 1.0)
    return method


def test_hessian_eigenvalue_exact_and_power_iteration():
    method = tiny_method()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    wd = method.arch_opt.param_groups[0]["weight_decay"]

    def f(a):
        logits = method.supernet(x, {"normal": F.softmax(a.view(6, 5), -1)})
        return F.cross_entropy(logits, y) + 0.5 * wd * (a * a).sum()

    H = torch.autograd.functional.hessian(f, method.alphas["normal"].detach().reshape(-1))
    expected = np.linalg.eigvalsh(H.double().numpy()).max()
    assert hessian_eigenvalue(method, (x, y), "exact") == pytest.approx(expected, rel=1e-4, abs=1e-6)
    torch.manual_seed(0)
    assert hessian_eigenvalue(method, (x, y), "power", iters=500, tol=1e-9) == pytest.approx(expected, rel=1e-3)


def record(epoch, skip=0, alpha=None, ev=None):
    return {"epoch": epoch, "skip_count": skip, "alpha": {"normal": alpha or [[0.5, 0.5]]}, "hessian_eigenvalue": ev}


def test_darts_plus_sc_fires_at_first_epoch_with_k_skips():
    rule, history, fired = DartsPlus(criterion="sc", k=2), [], []
    for e, skips in enumerate([0, 1, 1, 2, 3]):
        history.append(record(e, skips))
        fired.append(rule.check(history, 50))
    assert fired == [None, None, None, 3, 4]


def test_darts_plus_rt_counts_identical_rankings():
    rows = [[[0.6, 0.4]], [[0.3, 0.7]], [[0.4, 0.6]], [[0.2, 0.8]], [[0.45, 0.55]], [[0.9, 0.1]]]
    rule, history, fired = DartsPlus(criterion="rt", k=3), [], []
    for e, a in enumerate(rows):
        history.append(record(e, alpha=a))
        fired.append(rule.check(history, 50))
    # rankings: A, B, B, B, B, A → counter 1, 1, 2, 3, 4, 1
    assert fired == [None, None, None, 3, 4, None]


def es_history(late_value, upto=49):
    """Eigenvalues at RobustDARTS' Hessian epochs 0, 2, 4, ... and the last: 1 for the first 13, then ``late_value``."""
    history = []
    for e in range(upto + 1):
        ev = None
        if e % 2 == 0 or e == upto:
            ev = 1.0 if e // 2 <= 12 else late_value
        history.append(record(e, ev=ev))
    return history


def test_darts_es_fires_where_the_arithmetic_says():
    # k-th eigenvalue at epoch 2k; at k=13 (epoch 26) LA = (4·1 + 3)/5 = 1.4 vs LA 4 values back = 1 → 1.4 > 1.3;
    # la_epoch = 26 − 2·2 = 22, stop epoch = 22 − 2·4 = 14.
    rule, history = DartsES(), es_history(3.0)
    fired = [(r["epoch"], rule.check(history[: i + 1], 50)) for i, r in enumerate(history)]
    assert [f for f in fired if f[1] is not None][0] == (26, 14)
    assert replay(rule, history, 50) == 14  # the same rule replayed after the search (nasrun select stop=...)
    never = es_history(1.2)
    assert all(rule.check(never[: i + 1], 50) is None for i in range(len(never)))
    assert replay(rule, never, 50) is None
    with pytest.raises(UserError, match="hessian_every=2"):
        rule.check([record(0), record(1)], 50)


def test_selective_stop_online_waits_patience_epochs_after_the_peak():
    rule = SelectiveStopOnline(target="A", criterion="peak", eligibility=True, patience=2)
    mags = [{"A": 0.2, "B": 0.8}, {"A": 0.6, "B": 0.4}, {"A": 0.7, "B": 0.3}, {"A": 0.5, "B": 0.5},
            {"A": 0.65, "B": 0.35}, {"A": 0.3, "B": 0.7}]
    history = [{"epoch": e, "op_magnitude": m} for e, m in enumerate(mags)]
    # best so far: 0, 1, 2, 2, 2, 2 → t* = 2 has stood 2 epochs at epoch 4
    assert [rule.check(history[: i + 1], 50) for i in range(len(history))] == [None, None, None, None, 2, 2]
    with pytest.raises(UserError, match="operation magnitudes"):
        rule.check([{"epoch": 0, "op_magnitude": None}], 50)


def test_selective_stop_equations_and_eligibility():
    mags = [{"A": 0.2, "B": 0.5, "C": 0.3}, {"A": 0.45, "B": 0.35, "C": 0.2},
            {"A": 0.4, "B": 0.3, "C": 0.3}, {"A": 0.48, "B": 0.5, "C": 0.02}]
    # A first dominates at t1; t3 (A=0.48 but B dominant) is excluded by the eligibility rule.
    assert stop_epoch(mags, "A", "peak", True) == 1 and stop_epoch(mags, "A", "residual", True) == 1
    assert stop_epoch(mags, "A", "peak", False) == 3 and stop_epoch(mags, "A", "residual", False) == 3
    never = [{"A": 0.1, "B": 0.9}, {"A": 0.3, "B": 0.7}, {"A": 0.2, "B": 0.8}]
    assert stop_epoch(never, "A", "peak", True) == 1  # never dominant: every epoch is eligible
    # residual differs from peak when the other ops' sizes differ: Σ_{j≠A}(m_A − m_j)
    uneven = [{"A": 0.3, "B": 0.3, "C": 0.1}, {"A": 0.32, "B": 0.4, "C": 0.4}]
    assert stop_epoch(uneven, "A", "peak", False) == 1 and stop_epoch(uneven, "A", "residual", False) == 0


def test_operation_magnitudes():
    w = {"normal": torch.tensor([[0.2, 0.8], [0.6, 0.4]])}
    assert operation_magnitudes(w, [["a", "b"], ["a", "b"]]) == {"a": 0.4, "b": 0.6}
    assert operation_magnitudes(w, [["a", "b"], ["c", "d"]]) is None


def test_search_with_selective_stop_writes_one_genotype_per_target(tmp_path):
    cfg = make_cfg(["selector=selective_stop", "selector.criteria=[peak,residual]",
                    "selector.targets=[nor_conv_3x3,skip_connect]", "trainer.epochs=3"])
    run_search(cfg, tmp_path)
    files = sorted(p.name for p in (tmp_path / "genotypes").glob("*.json"))
    assert len(files) == 4 and all(f.startswith(("peak_", "residual_")) for f in files)
    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    chosen = json.loads((tmp_path / "genotype.json").read_text())
    t = stop_epoch([r["op_magnitude"] for r in history], "nor_conv_3x3", "peak", True)
    assert chosen["genotype"] == history[t]["genotype"]


def test_stop_rules_in_the_search_loop(tmp_path):
    summary = run_search(make_cfg(["stop=darts_plus", "stop.k=0", "trainer.epochs=4"]), tmp_path / "sc")
    assert summary["stop_epoch"] == 0 and summary["epochs_run"] == 1
    history = [json.loads(x) for x in (tmp_path / "sc" / "metrics.jsonl").read_text().splitlines()]
    assert summary["genotype"] == history[0]["genotype"]
    summary = run_search(make_cfg(["stop=darts_plus", "stop.k=100", "trainer.epochs=2"]), tmp_path / "never")
    assert summary["stop_epoch"] is None and summary["epochs_run"] == 2  # falls back to the final genotype
    run_search(make_cfg(["stop=darts_es", "diagnostics.hessian_every=2", "trainer.epochs=4"]), tmp_path / "es")
    evs = [json.loads(x)["hessian_eigenvalue"] for x in (tmp_path / "es" / "metrics.jsonl").read_text().splitlines()]
    assert evs[1] is None and all(isinstance(evs[e], float) for e in (0, 2, 3))  # epochs 0, 2, ... and the last
    with pytest.raises(UserError, match="diagnostics.hessian_every=2"):
        run_search(make_cfg(["stop=darts_es"]), tmp_path / "no_hessian")


def test_darts_ada_rolls_back_and_raises_the_weight_decay(tmp_path, monkeypatch):
    """The eigenvalue doubles at epoch 3 while the weight decay is below 0.01: DARTS-ADA (window 1, f 1, δ 1:
    stop epoch = e − 1) rolls back to epoch 2 twice (5e-4 → 5e-3 → 5e-2) and then runs on. The result must
    equal a straight run whose weight decay switches to 5e-2 at epoch 3: the rollback restores everything."""
    import nasrun.search
    from nasrun.methods.base import cosine_lr

    epochs, lr3 = 5, cosine_lr(3, 5, 0.025, 0.001)

    def fake_eigenvalue(method, valid, mode, chunk=None):
        at_epoch3 = method.w_opt.param_groups[0]["lr"] == lr3
        return 2.0 if at_epoch3 and method.weight_decay < 1e-2 else 1.0

    monkeypatch.setattr(nasrun.search, "hessian_eigenvalue", fake_eigenvalue)
    ada = ["stop=darts_ada", "stop.window=1", "stop.ev_freq=1", "stop.start_epoch=1", "stop.delta=1",
           "diagnostics.hessian_every=1", "method.w_weight_decay=5e-4", "stop.max_weight_decay=0.05",
           f"trainer.epochs={epochs}"]
    summary = run_search(make_cfg(ada), tmp_path / "ada")
    events = json.loads((tmp_path / "ada" / "ada.json").read_text())
    assert [(e["fired_after_epoch"], e["rollback_to"]) for e in events] == [(3, 2), (3, 2)]
    assert [e["weight_decay"] for e in events] == pytest.approx([5e-3, 5e-2])
    history = [json.loads(x) for x in (tmp_path / "ada" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == list(range(epochs)) and summary["epochs_run"] == epochs
    assert [r["w_weight_decay"] for r in history] == pytest.approx([5e-4] * 3 + [5e-2] * 2)
    early = json.loads((tmp_path / "ada" / "genotypes" / "darts_es.json").read_text())
    assert early["epoch"] == 2 and early["genotype"] == history[2]["genotype"]
    assert not (tmp_path / "ada" / "snapshots").exists()  # dropped once the run has finished

    # at its maximum the rule no longer acts: one raise to 5e-3 = max, then the run goes to its end
    summary = run_search(make_cfg(ada[:-2] + ["stop.max_weight_decay=5e-3", f"trainer.epochs={epochs}"]), tmp_path / "max")
    assert len(summary["ada"]) == 1 and summary["stop_epoch"] is None and summary["epochs_run"] == epochs

    # killed mid-epoch after the first rollback (call 9 = epoch 3, step 1 of its second pass), then resumed
    import os
    import signal

    import nasrun.engine
    from nasrun.errors import Interrupted

    calls, accumulate = {"n": 0}, nasrun.engine.accumulate

    def signal_at_step_9(*args):
        accumulate(*args)
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(nasrun.engine, "accumulate", signal_at_step_9)
    with pytest.raises(Interrupted):
        run_search(make_cfg(ada), tmp_path / "killed")
    assert len(json.loads((tmp_path / "killed" / "ada.json").read_text())) == 1
    monkeypatch.setattr(nasrun.engine, "accumulate", accumulate)
    run_search(make_cfg(ada), tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "ada.json").read_text()) == events
    resumed = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in history]

    from nasrun.methods.darts import Darts

    original = Darts.on_epoch_start

    def switch(self, epoch, total):
        original(self, epoch, total)
        if epoch == 3:
            self.weight_decay = 5e-2

    monkeypatch.setattr(Darts, "on_epoch_start", switch)
    run_search(make_cfg(["diagnostics.hessian_every=1", "method.w_weight_decay=5e-4", f"trainer.epochs={epochs}"]),
               tmp_path / "straight")
    a, b, c = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("ada", "straight", "killed"))
    for other in (b, c):
        assert all(torch.equal(a["supernet"][k], other["supernet"][k]) for k in a["supernet"])
        assert all(torch.equal(a["method"]["alphas"][k], other["method"]["alphas"][k]) for k in a["method"]["alphas"])



def test_select_reruns_a_selector_on_a_finished_search(tmp_path):
    from nasrun.errors import UserError
    from nasrun.select import run_select

    run_search(make_cfg(["trainer.epochs=3"]), tmp_path / "search")
    before = (tmp_path / "search" / "checkpoint.pt").read_bytes()
    cfg = make_cfg([f"run={tmp_path / 'search'}", "selector=selective_stop", "selector.criteria=[peak]",
                    "trainer.device=cpu", "benchmark=none"], config_name="select", tiny=False)
    summary = run_select(cfg, tmp_path / "sel")
    history = [json.loads(x) for x in (tmp_path / "search" / "metrics.jsonl").read_text().splitlines()]
    t = stop_epoch([r["op_magnitude"] for r in history], "nor_conv_3x3", "peak", True)
    assert summary["genotype"] == history[t]["genotype"] and summary["source"] == str(tmp_path / "search")
    assert json.loads((tmp_path / "sel" / "genotype.json").read_text())["source"] == str(tmp_path / "search")
    assert (tmp_path / "search" / "checkpoint.pt").read_bytes() == before  # the source run is untouched
    pt = make_cfg([f"run={tmp_path / 'search'}", "selector=pt", "selector.proj_intv=1", "selector.max_valid_batches=1",
                   "trainer.device=cpu", "benchmark=none"], config_name="select", tiny=False)
    assert len(json.loads(json.dumps(run_select(pt, tmp_path / "pt")))["genotype"]) > 0
    assert len(json.loads((tmp_path / "pt" / "selection.json").read_text())["decisions"]) == 6
    replayed = run_select(make_cfg([f"run={tmp_path / 'search'}", "selector=argmax", "stop=darts_plus", "stop.k=0",
                                    "trainer.device=cpu", "benchmark=none"], config_name="select", tiny=False),
                          tmp_path / "replay")
    assert replayed["stop_epoch"] == 0 and replayed["genotype"] == history[0]["genotype"]
    with pytest.raises(UserError, match="not a search run directory"):
        run_select(make_cfg([f"run={tmp_path / 'nothing'}"], config_name="select", tiny=False), tmp_path / "x")


def test_discretised_accuracy_uses_one_hot_argmax_weights():
    from nasrun.diagnostics import discretised_accuracy

    method = tiny_method()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    onehot = F.one_hot(method.alphas["normal"].argmax(-1), 5).float()
    expected = 100.0 * float((method.supernet(x, {"normal": onehot}).argmax(1) == y).float().mean())
    assert discretised_accuracy(method, [(x, y)]) == pytest.approx(expected, abs=1e-3)


def test_ss_darts_presets_resolve_to_the_paper_settings():
    nb = make_cfg(["+experiment=ss_darts_nb201"], tiny=False)
    assert (nb.trainer.batch_size, nb.method.w_lr, nb.method.w_lr_min, nb.method.arch_lr) == (256, 0.003, 0.003, 1e-3)
    assert nb.selector.name == "selective_stop" and list(nb.selector.criteria) == ["residual"] and nb.selector.eligibility
    es = make_cfg(["+experiment=darts_es_nb201"], tiny=False)
    # SS-DARTS's DARTS-V1-ES.py with DARTS-ES.config (tests/test_presets.py replays its stop rule)
    assert (es.trainer.batch_size, es.stop.name, es.diagnostics.hessian_every, es.selector.name) == (128, "darts_es", 1, "argmax")
    assert (es.method.w_lr, es.method.arch_lr, es.stop.start_epoch) == (0.015, 3e-4, 0)
    ds = make_cfg(["+experiment=ss_darts_darts"], tiny=False)
    assert (ds.space.name, ds.trainer.epochs, ds.trainer.batch_size, ds.method.w_lr_min, ds.method.arch_first) == \
        ("darts_7op", 75, 80, 0.025, True)
    assert sorted(ds.selector.targets) == ["dil_conv_3x3", "dil_conv_5x5", "sep_conv_3x3", "sep_conv_5x5"]
    assert list(ds.selector.criteria) == ["peak"] and not ds.selector.eligibility


def test_hessian_batched_rows_equal_row_by_row(monkeypatch):
    """The exact Hessian from batched backward passes (chunks of rows) equals the one built row by row."""
    method = tiny_method()
    g = torch.Generator().manual_seed(4)
    batch = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    one_by_one = hessian_eigenvalue(method, batch, "exact", chunk=1)
    calls, grad = [], torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    for chunk, passes in ((7, 5), (32, 1)):  # 30 rows
        calls.clear()
        assert hessian_eigenvalue(method, batch, "exact", chunk=chunk) == pytest.approx(one_by_one, rel=1e-6, abs=1e-9)
        assert calls.count(True) == passes and len(calls) == passes + 1  # + the first-order gradient


def test_a_selection_that_fails_after_training_leaves_a_run_select_can_use(tmp_path, monkeypatch):
    """Issue 15 item 1: whatever happens in selection, the trained run stays usable: the error names
    `nasrun select`, a rerun does not train again, and `nasrun select` reads the trained state."""
    import json

    import nasrun.engine as engine
    from nasrun.errors import UserError
    from nasrun.search import run_search
    from nasrun.select import run_select
    from nasrun.selectors.argmax import ArgmaxSelector

    def broken(self, **_):
        raise UserError("selection broke")

    monkeypatch.setattr(ArgmaxSelector, "select", broken)
    with pytest.raises(UserError, match=r"selection broke \(training finished and is kept in .*nasrun select run="):
        run_search(make_cfg(["trainer.epochs=2"]), tmp_path / "run")
    steps = {"n": 0}
    original = engine.accumulate
    monkeypatch.setattr(engine, "accumulate", lambda *a: (steps.__setitem__("n", steps["n"] + 1), original(*a)))
    with pytest.raises(UserError, match="selection broke"):
        run_search(make_cfg(["trainer.epochs=2"]), tmp_path / "run")
    assert steps["n"] == 0  # the rerun resumed after training
    monkeypatch.undo()
    cfg = make_cfg([f"run={tmp_path / 'run'}", "selector=argmax", "trainer.device=cpu", "benchmark=none"],
                   config_name="select", tiny=False)
    summary = run_select(cfg, tmp_path / "sel")
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and summary["genotype"] == history[-1]["genotype"]


def test_discretised_accuracy_reads_a_fixed_number_of_clean_valid_batches(tmp_path):
    """Issue 15 item 9: the discretised accuracy is the one-hot(argmax α) supernet's accuracy over the first N valid
    batches in index order (the same images every epoch), computed here independently; BN statistics are untouched."""
    from nasrun.diagnostics import discretised_accuracy
    from nasrun.search import build_search

    cfg = make_cfg(["dataset.synthetic.n_train=160", "diagnostics.discrete_batches=3", "space.track_running_stats=true"])
    space, _, stream, _, sup, method = build_search(cfg, torch.device("cpu"))
    before = {n: b.clone() for n, b in sup.named_buffers()}
    got = discretised_accuracy(method, stream.valid_batches(max_batches=3))
    for n, b in sup.named_buffers():
        assert torch.equal(b, before[n]), n
    idx = stream.valid_idx[:3 * 16]
    one_hot = {k: torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).float() for k, w in method.derive_weights().items()}
    logits = torch.cat([sup(stream.augment.normalise(stream.x[i]), one_hot) for i in idx.split(16)])
    expected = 100.0 * (logits.argmax(1) == stream.y[idx]).float().mean().item()
    assert got == pytest.approx(expected, abs=1e-3) and len(idx) == 48
    record = json.loads((Path(run_search(cfg, tmp_path)["run_dir"]) / "metrics.jsonl").read_text().splitlines()[0])
    assert record["discrete_valid_acc"] is not None


def test_skip_count_means_skips_per_normal_cell_everywhere():
    """Issue 15 item 9: on amended_deep (every cell its own α) skip_count is the mean over the normal cells, not the
    total over all cells; the reduction cells (n//3, 2n//3) do not count."""
    from nasrun.spaces import get_space
    from nasrun.spaces.darts_genotypes import DeepGenotype

    def cell(skips):
        return tuple([("skip_connect", 0)] * skips + [("sep_conv_3x3", 1)] * (8 - skips))

    deep = DeepGenotype(cells_genes=(cell(2), cell(8), cell(0), cell(8), cell(1)))  # reductions at 1 and 3
    assert get_space("amended_deep").genotype_stats(deep)["skip_count"] == 1
    deep = DeepGenotype(cells_genes=(cell(2), cell(8), cell(1), cell(8), cell(1)))
    assert get_space("amended_deep").genotype_stats(deep)["skip_count"] == pytest.approx(4 / 3, abs=1e-3)
    darts = get_space("darts")
    g = darts.parse_genotype("Genotype(normal=[('skip_connect', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), "
                             "('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                             "('sep_conv_3x3', 1)], normal_concat=range(2, 6), reduce=[" + ", ".join(["('skip_connect', 0)"] * 8)
                             + "], reduce_concat=range(2, 6))")
    assert darts.genotype_stats(g)["skip_count"] == 2


def test_a_retrain_that_would_run_at_lr_zero_warns():
    from nasrun.retrain import Protocol

    def protocol(**kw):
        base = dict(name="x", C=8, layers=2, imagenet=False, auxiliary_weight=0.0, drop_path=0.0, cutout=0, epochs=1,
                    batch_size=8, lr=0.025, lr_min=0.0, schedule="cosine", gamma=0.97, lr_offset=1, momentum=0.9,
                    weight_decay=3e-4, grad_clip=5.0, label_smoothing=0.0)
        return Protocol(**{**base, **kw})

    assert protocol().lr_at(0) == 0.0 and "1 of the 1 retrain epochs run at learning rate 0" in protocol().idle_warning()
    assert protocol(epochs=600).idle_warning() is None  # only the last epoch: the schedule as meant
    assert protocol(lr_offset=0).idle_warning() is None and protocol(lr_min=1e-3).idle_warning() is None


def test_oracle_epoch_keeps_the_epoch_the_benchmark_scores_best(tmp_path):
    """[SS] Table 3's "optimal" row: replayed on a finished search, selector=oracle_epoch keeps the genotype of the
    epoch with the highest benchmark test accuracy on the chosen dataset (read from an NB201 file in the original
    format; the truth from the fixture's own numbers), and refuses a run without a benchmark in one line."""
    from nasrun.select import run_select

    from .conftest import write_nb201_fixture

    run_search(make_cfg(["trainer.epochs=6", "method.arch_lr=0.3"]), tmp_path / "search")
    history = [json.loads(x) for x in (tmp_path / "search" / "metrics.jsonl").read_text().splitlines()]
    archs = list(dict.fromkeys(r["genotype"] for r in history))
    bench_file = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    truth = write_nb201_fixture(bench_file, archs)
    for dataset, source, key in (("cifar100", "cifar100", "x-test"), ("cifar10", "cifar10", "ori-test")):
        scores = [truth[r["genotype"]][source][0][key] for r in history]
        best = scores.index(max(scores))
        cfg = make_cfg([f"run={tmp_path / 'search'}", "selector=oracle_epoch", f"selector.dataset={dataset}",
                        "trainer.device=cpu", "benchmark=nb201", f"benchmark.path={bench_file}"],
                       config_name="select", tiny=False)
        summary = run_select(cfg, tmp_path / f"oracle_{dataset}")
        assert summary["genotype"] == history[best]["genotype"] and summary["selector"] == f"oracle_epoch_{dataset}@{best}"
        assert summary["benchmark"][dataset]["test_acc"] == pytest.approx(max(scores))
    with pytest.raises(UserError, match="needs the benchmark file"):
        run_select(make_cfg([f"run={tmp_path / 'search'}", "selector=oracle_epoch", "trainer.device=cpu",
                             "benchmark=none"], config_name="select", tiny=False), tmp_path / "none")
    with pytest.raises(UserError, match="space=darts has none"):
        run_search(make_cfg(["space=darts", "selector=oracle_epoch"]), tmp_path / "darts")


def test_kept_snapshots_let_a_selector_run_on_the_supernet_of_an_earlier_epoch(tmp_path):
    """[PT] Fig. 4: ``trainer.keep_snapshots=2`` keeps the state after epochs 2 and 4 (0-based 1, 3) after the run;
    ``nasrun select snapshot=1`` selects from that supernet (argmax: the genotype the history logged after epoch 2,
    not the final one) with the history up to it; a missing snapshot is one line naming the kept ones; the report
    draws the benchmark accuracy of each replay against its epoch (the NB201 fixture's numbers)."""
    from nasrun.report import load_run, trajectory_figure
    from nasrun.select import run_select

    from .conftest import write_nb201_fixture

    run_search(make_cfg(["trainer.epochs=4", "method.arch_lr=0.3", "trainer.keep_snapshots=2"]), tmp_path / "search")
    assert sorted(p.name for p in (tmp_path / "search" / "snapshots").iterdir()) == ["epoch_001.pt", "epoch_003.pt"]
    history = [json.loads(x) for x in (tmp_path / "search" / "metrics.jsonl").read_text().splitlines()]
    assert history[1]["genotype"] != history[3]["genotype"]
    bench_file = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    truth = write_nb201_fixture(bench_file, list(dict.fromkeys(r["genotype"] for r in history)))
    for epoch in (1, 3):
        cfg = make_cfg([f"run={tmp_path / 'search'}", "selector=argmax", f"snapshot={epoch}", "trainer.device=cpu",
                        "benchmark=nb201", f"benchmark.path={bench_file}"], config_name="select", tiny=False)
        summary = run_select(cfg, tmp_path / f"sel{epoch}")
        assert summary["genotype"] == history[epoch]["genotype"] and summary["snapshot"] == epoch
    replayed = run_select(make_cfg([f"run={tmp_path / 'search'}", "selector=argmax", "stop=darts_plus", "stop.k=0",
                                    "snapshot=3", "trainer.device=cpu", "benchmark=none"], config_name="select",
                                   tiny=False), tmp_path / "stop")
    assert replayed["stop_epoch"] == 0  # the stop rule replays over the snapshot's history
    with pytest.raises(UserError, match=r"kept no snapshot of epoch 2; it kept epochs \[1, 3\]"):
        run_select(make_cfg([f"run={tmp_path / 'search'}", "selector=argmax", "snapshot=2", "trainer.device=cpu",
                             "benchmark=none"], config_name="select", tiny=False), tmp_path / "x")
    fig = trajectory_figure([load_run(tmp_path / f"sel{e}") for e in (1, 3)])
    c10 = fig.axes[0]
    assert c10.get_title() == "test accuracy on cifar10" and len(c10.lines) == 1
    assert list(c10.lines[0].get_xdata()) == [2, 4]
    assert list(c10.lines[0].get_ydata()) == pytest.approx(
        [truth[history[e]["genotype"]]["cifar10"][0]["ori-test"] for e in (1, 3)])
