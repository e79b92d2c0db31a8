"""Stop rules, selective stop and the Hessian diagnostic (methods.md §4.9-4.10, §5.3, §6.1-6.2)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nasrun.config import build
from nasrun.diagnostics import hessian_eigenvalue, operation_magnitudes
from nasrun.search import run_search
from nasrun.selectors.selective_stop import stop_epoch
from nasrun.stops import DartsES, DartsPlus

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
    """Eigenvalues every 2 epochs (epochs 1, 3, ...): value 1 for the first 13, then ``late_value``."""
    history = []
    for e in range(upto + 1):
        ev = None
        if (e + 1) % 2 == 0:
            k = (e - 1) // 2
            ev = 1.0 if k <= 12 else late_value
        history.append(record(e, ev=ev))
    return history


def test_darts_es_fires_where_the_arithmetic_says():
    # k-th eigenvalue at epoch 2k+1; at k=13 (epoch 27) LA = (4·1 + 3)/5 = 1.4 vs LA 4 values back = 1 → 1.4 > 1.3;
    # la_epoch = 27 − 2·2 = 23, stop epoch = 23 − 2·4 = 15.
    rule, history = DartsES(), es_history(3.0)
    fired = [(r["epoch"], rule.check(history[: i + 1], 50)) for i, r in enumerate(history)]
    assert [f for f in fired if f[1] is not None][0] == (27, 15)
    never = es_history(1.2)
    assert all(rule.check(never[: i + 1], 50) is None for i in range(len(never)))


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
    assert evs[0] is None and evs[2] is None and isinstance(evs[1], float) and isinstance(evs[3], float)


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
    with pytest.raises(UserError, match="not a search run directory"):
        run_select(make_cfg([f"run={tmp_path / 'nothing'}"], config_name="select", tiny=False), tmp_path / "x")


def test_discretised_accuracy_uses_one_hot_argmax_weights():
    from nasrun.diagnostics import discretised_accuracy

    method = tiny_method()
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
    onehot = F.one_hot(method.alphas["normal"].argmax(-1), 5).float()
    expected = 100.0 * float((method.supernet(x, {"normal": onehot}).argmax(1) == y).float().mean())
    assert discretised_accuracy(method, (x, y)) == pytest.approx(expected, abs=1e-3)
