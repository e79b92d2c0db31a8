"""``nasrun report``: grouping, statistics (against numpy), CSV/Markdown and plots on synthetic run directories."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from nasrun.errors import UserError
from nasrun.report import run_report
from nasrun.search import run_search

from .conftest import make_cfg


def fake_run(path, method, seed, valid, test, seconds, device="cuda", epochs=4):
    path.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "method": {"name": method, "w_lr": 0.025},
                                     "space": {"name": "nb201"}, "trainer": {"device": device, "epochs": epochs}}),
                   path / "config.yaml")
    bench = {"cifar10": {"valid_acc": valid, "test_acc": test}, "cifar100": {"valid_acc": valid - 20, "test_acc": test - 20}}
    (path / "summary.json").write_text(json.dumps({"benchmark": bench, "search_seconds": seconds, "seed": seed}))
    rng = np.random.default_rng(seed)
    lines = [{"epoch": e, "valid_acc": 50 + e, "skip_count": e % 3, "depth": 2, "hessian_eigenvalue": 0.1 * e,
              "ies_entropy": 1.5 - 0.1 * e, "discrete_valid_acc": 30 + e,
              "op_magnitude": {"skip_connect": 0.2 + 0.01 * e, "nor_conv_3x3": 0.5 - 0.01 * e, "nor_conv_1x1": 0.3},
              "benchmark": {"test_acc": float(rng.uniform(80, 90))}} for e in range(epochs)]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


@pytest.fixture
def sweep(tmp_path):
    truth = {"darts": [(60.0, 61.0, 3600), (70.0, 72.5, 4000), (55.0, 54.0, 3800)],
             "tse_darts": [(90.0, 92.0, 7200), (91.5, 93.0, 7000)]}
    k = 0
    for method, runs in truth.items():
        for seed, (v, t, s) in enumerate(runs):
            # the device differs between runs but is not a result-changing key: no extra group
            fake_run(tmp_path / "multirun" / str(k), method, seed, v, t, s, device="cuda" if seed else "cpu")
            k += 1
    return tmp_path / "multirun", truth


def test_groups_statistics_and_files(sweep, tmp_path):
    root, truth = sweep
    rows, cols, out, _ = run_report([root], tmp_path / "report")
    assert [r["group"] for r in rows] == ["method=darts", "method=tse_darts"]
    for row, (method, runs) in zip(rows, truth.items()):
        assert row["group"] == f"method={method}"
        v, t, s = (np.array(x, dtype=float) for x in zip(*runs))
        assert row["n"] == len(runs)
        assert row["cifar10 valid"] == pytest.approx((v.mean(), v.std(), len(runs)))
        assert row["cifar10 test"] == pytest.approx((t.mean(), t.std(), len(runs)))
        assert row["cifar100 test"] == pytest.approx(((t - 20).mean(), (t - 20).std(), len(runs)))
        assert row["search h"] == pytest.approx(((s / 3600).mean(), (s / 3600).std(), len(runs)))
    with open(out / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert float(table[0]["cifar10 test mean"]) == pytest.approx(np.mean([61.0, 72.5, 54.0]))
    assert float(table[1]["cifar10 test std"]) == pytest.approx(np.std([92.0, 93.0]))
    md = (out / "report.md").read_text()
    assert f"{np.mean([92.0, 93.0]):.2f} ± {np.std([92.0, 93.0]):.2f} (2)" in md and md.startswith("| group | n |")
    pngs = sorted((out / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["all_groups.png", "method=darts.png", "method=tse_darts.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in pngs)


def test_best_of_n_reports_the_run_with_the_best_validation_accuracy(sweep, tmp_path):
    root, _ = sweep
    rows, *_ = run_report([root], tmp_path / "best", protocol="best-of-n", plots=False)
    darts = rows[0]
    assert darts["cifar10 valid"] == (70.0, 0.0, 1) and darts["cifar10 test"] == (72.5, 0.0, 1) and darts["n"] == 3
    assert darts["run"].endswith("multirun/1")
    with pytest.raises(UserError, match="no run directories"):
        run_report([tmp_path / "best"], plots=False)  # tables, but no runs


def test_report_on_real_searches_via_the_cli(tmp_path):
    for seed in (0, 1):
        run_search(make_cfg([f"seed={seed}", "trainer.epochs=2"]), tmp_path / "runs" / str(seed))
    proc = subprocess.run([sys.executable, "-m", "nasrun.cli", "report", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (tmp_path / "runs" / "report.md").read_text().splitlines()
    assert len(md) == 3 and "| 2 |" in md[2]  # one group of two seeds
    from nasrun.spaces import get_space
    from nasrun.utils import count_parameters

    summaries = [json.loads((tmp_path / "runs" / str(s) / "summary.json").read_text()) for s in (0, 1)]
    cfg = make_cfg([])
    space = get_space("nb201", **{k: v for k, v in cfg.space.items() if k in ("C", "N")})
    classes = cfg.dataset.synthetic.num_classes
    params = [count_parameters(space.build_network(s["genotype"], classes)) / 1e6 for s in summaries]
    assert [s["params_m"] for s in summaries] == pytest.approx(params)  # the derived network's size
    assert "params M" in md[0]
    assert (tmp_path / "runs" / "plots").is_dir() and any((tmp_path / "runs" / "plots").iterdir())
    bad = subprocess.run([sys.executable, "-m", "nasrun.cli", "report", str(tmp_path / "nothing")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("nasrun: error:") and "does not exist" in bad.stderr


def test_best_of_n_pools_a_key_and_selects_by_a_named_column(tmp_path):
    """SP-DARTS Table V: four t_sp per space, the best by the monitored supernet accuracy."""
    monitor = {("darts_s1", 4e-4): 81.0, ("darts_s1", 5e-4): 88.0, ("darts_s1", 6e-4): 84.0, ("darts_s1", 7e-4): 79.0,
               ("darts_s2", 4e-4): 70.0, ("darts_s2", 5e-4): 71.0, ("darts_s2", 6e-4): 69.0, ("darts_s2", 7e-4): 75.0}
    for k, ((space, t_sp), acc) in enumerate(monitor.items()):
        path = tmp_path / "sweep" / str(k)
        path.mkdir(parents=True)
        OmegaConf.save(OmegaConf.create({"seed": 0, "method": {"name": "sp_darts", "t_sp": t_sp}, "space": {"name": space}}),
                       path / "config.yaml")
        (path / "summary.json").write_text(json.dumps({"search_seconds": 60.0}))
        # supernet valid (at the step temperature) ranks the runs the other way round
        (path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "valid_acc": 100 - acc, "monitor_acc": acc}) + "\n")
    rows, *_ = run_report([tmp_path / "sweep"], protocol="best-of-n", plots=False, pool=["method.t_sp"],
                            select_by="supernet monitor")
    assert [(r["group"], r["n"], r["supernet monitor"][0]) for r in rows] == [("space=darts_s1", 4, 88.0),
                                                                              ("space=darts_s2", 4, 75.0)]
    assert rows[0]["run"].endswith("sweep/1") and rows[1]["run"].endswith("sweep/7")
    unpooled, *_ = run_report([tmp_path / "sweep"], protocol="best-of-n", plots=False)
    assert len(unpooled) == 8
    by_default, *_ = run_report([tmp_path / "sweep"], protocol="best-of-n", plots=False, pool=["method.t_sp"])
    assert by_default[0]["supernet valid"][0] == 100 - 79.0  # 'supernet valid' when no column is named
    with pytest.raises(UserError, match="--pool method.tsp"):
        run_report([tmp_path / "sweep"], plots=False, pool=["method.tsp"])
    with pytest.raises(UserError, match="--select-by 'monitor'.*supernet monitor"):
        run_report([tmp_path / "sweep"], protocol="best-of-n", plots=False, select_by="monitor")


def test_report_cannot_mislead(tmp_path):
    """Labels name what differs, every run is accounted for, duplicates are flagged, single runs carry no ± and
    columns follow the benchmark's dataset order; the terminal table fits 80 columns."""
    root = tmp_path / "runs"
    fake_run(root / "a0", "darts", 0, 60.0, 61.0, 3600)
    fake_run(root / "a1", "darts", 1, 62.0, 63.0, 3600)
    fake_run(root / "b0", "darts", 0, 70.0, 72.5, 3600)
    fake_run(root / "b0copy", "darts", 0, 70.0, 72.5, 3600)
    for d in ("b0", "b0copy"):  # the same method at another learning rate, run twice with seed 0
        cfg = OmegaConf.load(root / d / "config.yaml")
        cfg.method.w_lr = 0.05
        OmegaConf.save(cfg, root / d / "config.yaml")
    fake_run(root / "single", "tse_darts", 0, 90.0, 92.0, 3600)
    for name, status in (("failed", {"status": "failed", "error": "unknown dataset.split 'bogus'"}), ("running", None)):
        (root / name).mkdir()
        OmegaConf.save(OmegaConf.load(root / "a0" / "config.yaml"), root / name / "config.yaml")
        (root / name / "env.json").write_text("{}")
        if status:
            (root / name / "status.json").write_text(json.dumps(status))
    fake_run(root / "corrupt", "darts", 3, 1.0, 1.0, 1)
    (root / "corrupt" / "summary.json").write_text('{"benchmark": {"cifar10": ')
    with open(root / "a1" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "valid_ac')  # killed mid-write
    with pytest.warns(UserWarning, match=r"a1/metrics.jsonl: its last line is half-written"):
        rows, cols, out, failed = run_report([root], tmp_path / "rep")
    labels = [r["group"] for r in rows]
    assert labels == ["method=darts method.w_lr=0.025", "method=darts method.w_lr=0.05", "method=tse_darts method.w_lr=0.025"]
    assert rows[1]["note"] == "seed 0 more than once" and "note" not in rows[0]
    assert sorted(Path(r["dir"]).name for r in failed) == ["corrupt", "failed", "running"]
    problems = {Path(r["dir"]).name: r["problem"] for r in failed}
    assert problems["failed"] == "failed: unknown dataset.split 'bogus'" and problems["running"].startswith("unfinished")
    assert "corrupt" in problems["corrupt"] and "summary.json" in problems["corrupt"]
    assert cols[:4] == ["cifar10 valid", "cifar10 test", "cifar100 valid", "cifar100 test"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| method=tse_darts method.w_lr=0.025 | 1 | 90.00 | 92.00 |" in md and "Not in the table (3 runs)" in md
    assert len(list((tmp_path / "rep" / "plots").glob("method*.png"))) == 3  # one per group, none overwritten
    with pytest.warns(UserWarning, match="half-written"):
        best, *_ = run_report([root], tmp_path / "best", protocol="best-of-n", plots=False)
    assert best[0]["run"].endswith("a1") and "a1 |" in (tmp_path / "best" / "report.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "nasrun.cli", "report", str(root), "-o", str(tmp_path / "cli"), "--no-plots"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    table = [ln for ln in proc.stdout.splitlines() if not ln.startswith(("wrote", "not in the table"))]
    assert table and all(len(ln) <= 80 for ln in table), proc.stdout
    assert "92.00" in proc.stdout and "not in the table" in proc.stdout


def test_plots_say_what_they_show(tmp_path):
    """Labelled axes, the benchmark's dataset in its title, the band stated, epochs counted from 1 as the log does,
    step plots for the counts, the op legend outside the data, and every group side by side per metric."""
    from nasrun.report import compare_figure, group_figure, load_run

    for seed in (0, 1):
        fake_run(tmp_path / "d" / str(seed), "darts", seed, 60.0, 61.0, 3600, epochs=5)
    fake_run(tmp_path / "t" / "0", "tse_darts", 0, 90.0, 92.0, 3600, epochs=5)
    for path in (tmp_path / "d").iterdir():
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        for rec in lines:
            rec["benchmark"]["dataset"] = "cifar10-valid"
        (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    darts = [load_run(p) for p in sorted((tmp_path / "d").iterdir())]
    fig = group_figure("method=darts", darts)
    axes = fig.axes
    assert all(ax.get_ylabel() and ax.get_xlabel().startswith("epoch") for ax in axes[:6])
    assert axes[0].get_title() == "benchmark test accuracy on cifar10-valid"
    assert fig._suptitle.get_text() == "method=darts: mean, band = min-max over 2 runs"
    assert list(axes[1].lines[0].get_xdata()) == [1, 2, 3, 4, 5]
    assert axes[4].lines[0].get_drawstyle().startswith("steps") and axes[5].lines[0].get_drawstyle().startswith("steps")
    legend = axes[2].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["nor_conv_1x1", "nor_conv_3x3", "skip_connect"]
    assert [ax.get_title() for ax in axes[6:9]] == ["IES: entropy of the mixing weights",
                                                    "discretised supernet accuracy (argmax α)", "α_skip − α_conv (normal cell)"]
    # α_skip − mean(α_conv): 0.2 + 0.01e − (0.5 − 0.01e + 0.3)/2 = −0.2 + 0.015e, the same in both runs
    assert list(axes[8].lines[0].get_ydata()) == pytest.approx([-0.2 + 0.015 * e for e in range(5)])
    assert legend.get_bbox_to_anchor().x0 > axes[2].get_window_extent().x1 - 1  # outside the data area
    tse = [load_run(tmp_path / "t" / "0")]
    both = compare_figure([("method=darts", darts), ("method=tse_darts", tse)])
    assert [len(ax.lines) for ax in both.axes] == [2] * 8 + [0]  # eight metrics, then the legend's slot
    legend = both.axes[8].get_legend()
    assert {t.get_text() for t in legend.get_texts()} == {"method=darts (n=2)", "method=tse_darts (n=1)"}


def test_every_figure_has_a_legend_when_the_benchmark_panel_is_empty(tmp_path):
    """Issue 22 §5: runs without a benchmark (every DARTS-space run) still get the groups' legend in all_groups.png
    (it came from the benchmark panel), both figures have the line/band legend, and the benchmark panel of the
    comparison names its dataset when there is one."""
    from nasrun.report import compare_figure, group_figure, load_run

    for name, method in (("d", "darts"), ("t", "tse_darts")):
        fake_run(tmp_path / name / "0", method, 0, 60.0, 61.0, 3600, epochs=3)
        path = tmp_path / name / "0" / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({k: v for k, v in x.items() if k != "benchmark"}) + "\n" for x in lines))
    groups = [("method=darts", [load_run(tmp_path / "d" / "0")]), ("method=tse_darts", [load_run(tmp_path / "t" / "0")])]
    both = compare_figure(groups)
    assert not both.axes[0].lines  # nothing logged in the benchmark panel
    legend = both.axes[8].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["method=darts (n=1)",
                                                                               "method=tse_darts (n=1)"]
    assert [ln.get_color() for ln in both.axes[1].lines] == [h.get_color() for h in legend.legend_handles]
    for fig in (both, group_figure(*groups[0])):
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["mean over the runs", "min-max over the runs"]
        assert fig._suptitle.get_text() and all(ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
                                                for ax in fig.axes[:5])
    for i, name in enumerate(("d", "t")):
        path = tmp_path / name / "0" / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**x, "benchmark": {"test_acc": 80.0 + i, "dataset": "cifar100"}}) + "\n"
                                for x in lines))
    groups = [("method=darts", [load_run(tmp_path / "d" / "0")]), ("method=tse_darts", [load_run(tmp_path / "t" / "0")])]
    assert compare_figure(groups).axes[0].get_title() == "benchmark test accuracy on cifar100"


def test_report_puts_the_papers_numbers_beside_ours(tmp_path):
    """``nasrun report --paper FILE``: each row of a table file matches our finished runs by config values; per
    column the paper's mean ± std, ours (mean ± std, n), the difference and whether ours is in the paper's band;
    rows nobody ran say so; report_paper.csv and report.md carry the same; a malformed file is one line."""
    import csv

    import yaml

    from nasrun.report import compare_paper

    def fake(name, method, dataset, test):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "dataset": {"name": dataset},
                                                         "seed": int(name[-1])}))
        (run / "summary.json").write_text(json.dumps({"benchmark": {"cifar10": {"valid_acc": 90.0, "test_acc": test}}}))

    fake("a0", "sp_darts", "cifar10", 94.0)
    fake("a1", "sp_darts", "cifar10", 93.0)
    fake("b0", "darts", "cifar10", 54.3)
    err = tmp_path / "err.yaml"
    err.write_text(yaml.safe_dump({"error_of": True, "rows": [
        {"row": "DARTS", "match": {"method.name": "darts"}, "values": {"cifar10 test": [45.7, None]}}]}))
    _, (darts_err,) = compare_paper([tmp_path / "runs"], err, tmp_path / "err")
    assert darts_err["ours"] == pytest.approx((45.7, 0.0, 1)) and darts_err["within"] is None  # 100 − 54.3
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"paper": "P", "table": "T1", "metric": "acc", "rows": [
        {"row": "SP c10", "match": {"method.name": "sp_darts", "dataset.name": "cifar10"},
         "values": {"cifar10 test": [94.01, 0.31]}},
        {"row": "DARTS", "match": {"method.name": "darts"}, "values": {"cifar10 test": [54.30, 0.0]}},
        {"row": "SP c100", "match": {"method.name": "sp_darts", "dataset.name": "cifar100"},
         "values": {"cifar10 test": [94.02, 0.20]}},
        {"row": "EX-GAEA", "match": {"method.name": "ex_gaea"}, "not_run": "no such method",
         "values": {"cifar10 test": [93.43, 0.25]}}]}))
    _, rows = compare_paper([tmp_path / "runs"], ref, tmp_path / "out")
    sp, darts, missing, reason = rows
    assert sp["ours"] == pytest.approx((93.5, 0.5, 2)) and sp["diff"] == pytest.approx(93.5 - 94.01)
    assert sp["within"] is False  # 0.51 from the paper's mean, its std is 0.31
    assert darts["ours"] == pytest.approx((54.3, 0.0, 1)) and darts["within"] is True
    assert missing["ours"] is None and missing["within"] is None
    written = list(csv.DictReader(open(tmp_path / "out" / "report_paper.csv")))
    assert [w["row"] for w in written] == ["SP c10", "DARTS", "SP c100", "EX-GAEA"] and written[0]["ours n"] == "2"
    md = (tmp_path / "out" / "report.md").read_text()
    assert reason["ours"] is None and "| EX-GAEA | cifar10 test | 93.43 ± 0.25 | not run: no such method |" in md
    assert "| SP c10 | cifar10 test | 94.01 ± 0.31 | 93.50 ± 0.50 (2) | -0.51 | no |" in md and "not run" in md
    proc = subprocess.run([sys.executable, "-m", "nasrun.cli", "report", str(tmp_path / "runs"), "--no-plots", "-o",
                           str(tmp_path / "cli"), "--paper", str(ref)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "paper beside ours" in proc.stdout and "not run" in proc.stdout and "93.50 ± 0.50 (2)" in proc.stdout
    ops = tmp_path / "ops.yaml"  # a list-valued key ([SS] Table 2: GAEA on standard-201 vs its own no-none space)
    for name, space_ops in (("c0", ["none", "skip_connect"]), ("d0", ["skip_connect"])):
        fake(name, "gaea", "cifar10", 90.0 + len(space_ops))
        config = yaml.safe_load((tmp_path / "runs" / name / "config.yaml").read_text())
        (tmp_path / "runs" / name / "config.yaml").write_text(yaml.safe_dump({**config, "space": {"ops": space_ops}}))
    ops.write_text(yaml.safe_dump({"rows": [{"row": r, "match": {"method.name": "gaea", "space.ops": o},
                                             "values": {"cifar10 test": [1.0, None]}}
                                            for r, o in (("std", ["none", "skip_connect"]), ("own", ["skip_connect"]))]}))
    _, (std, own) = compare_paper([tmp_path / "runs"], ops, tmp_path / "ops")
    assert std["ours"] == pytest.approx((92.0, 0.0, 1)) and own["ours"] == pytest.approx((91.0, 0.0, 1))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rows": [{"row": "x", "match": {}}]}))
    with pytest.raises(UserError, match="row 1 \\(x\\): bad or missing 'values'"):
        compare_paper([tmp_path / "runs"], bad)


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(__file__).parent.parent / "scripts" / "tables" / "ref")
                                         .glob("*.yaml")))
def test_paper_table_files_parse_and_name_our_columns(name):
    """The shipped table files parse, and each row's match keys are config keys its script's presets set."""
    from pathlib import Path

    from nasrun.report import read_paper

    ref = read_paper(Path(__file__).parent.parent / "scripts" / "tables" / "ref" / f"{name}.yaml")
    known = {"method.name", "dataset.name", "space.name", "selector.name", "stop.name", "stop.criterion", "stop.k",
             "task_name", "search.selection", "search.space.layers", "retrain.name", "method.w_lr", "method.single_level",
             "trainer.epochs", "space.ops", "selector.dataset", "method.arch_lr"}
    assert ref["rows"] and all(set(r["match"]) <= known for r in ref["rows"])


def test_a_retrain_is_matched_by_its_searchs_keys_and_best_of_n_takes_the_best(tmp_path):
    """An eval run whose genotype names a search run (the run, its genotype.json, or a file of its genotypes/) takes
    the search's keys it lacks (method.name …) but keeps its own (seed, space, dataset); a genotype text takes none.
    A ``"<column> (best)"`` paper column is the lowest error (highest accuracy) of the matched runs."""
    import yaml

    from nasrun.report import compare_paper, load_run, search_of

    searches = []
    for i, method in enumerate(("amended_darts", "amended_darts", "darts")):
        s = tmp_path / "search" / str(i)
        (s / "genotypes").mkdir(parents=True)
        (s / "config.yaml").write_text(yaml.safe_dump({"task_name": "search", "seed": 10 + i, "method": {"name": method},
                                                       "space": {"name": "darts_fixed"}, "trainer": {"epochs": 50}}))
        (s / "genotype.json").write_text(json.dumps({"genotype": "x"}))
        (s / "genotypes" / "sep3.json").write_text(json.dumps({"genotype": "x"}))
        searches.append(s)
    pointers = [searches[0], searches[1] / "genotype.json", searches[2] / "genotypes" / "sep3.json"]
    for i, (pointer, error) in enumerate(zip(pointers, (3.0, 2.5, 9.0))):
        e = tmp_path / "retrain" / str(i)
        e.mkdir(parents=True)
        (e / "config.yaml").write_text(yaml.safe_dump({"task_name": "eval", "seed": 0, "genotype": str(pointer),
                                                       "space": {"name": "darts_fixed"}, "trainer": {"device": "cpu"}}))
        (e / "summary.json").write_text(json.dumps({"test_error": error, "params_m": 3.0 + i}))
    assert [search_of(str(p)) for p in pointers] == searches and search_of("DARTS_V2") is None
    assert search_of(str(tmp_path / "retrain" / "0")) is None  # a run without genotype.json is no search
    config = load_run(tmp_path / "retrain" / "2")["config"]
    assert config["method.name"] == "darts" and config["trainer.epochs"] == 50
    assert config["seed"] == 0 and config["task_name"] == "eval" and config["trainer.device"] == "cpu"
    assert config["search.trainer.epochs"] == 50 and config["search.task_name"] == "search" and "search.seed" not in config
    assert config["search.selection"] is None and "search.selection" not in load_run(tmp_path / "retrain" / "0")["config"]
    replay = tmp_path / "select" / "0"  # nasrun select on a search: the search's settings and seed, its own selector
    replay.mkdir(parents=True)
    (replay / "config.yaml").write_text(yaml.safe_dump({"task_name": "select", "run": str(searches[2]),
                                                        "selector": {"name": "argmax"}}))
    config = load_run(replay)["config"]
    assert config["method.name"] == "darts" and config["seed"] == 12 and config["selector.name"] == "argmax"
    (replay / "genotype.json").write_text(json.dumps({"genotype": "x", "selector": "argmax"}))
    retrained = tmp_path / "retrain_of_replay"  # a retrain of a replay: the replay's selector, the search's method
    retrained.mkdir()
    (retrained / "config.yaml").write_text(yaml.safe_dump({"task_name": "eval", "seed": 0, "genotype": str(replay)}))
    config = load_run(retrained)["config"]
    assert config["method.name"] == "darts" and config["selector.name"] == "argmax" and config["seed"] == 0
    assert config["search.method.name"] == "darts" and not any(k.startswith("search.search.") for k in config)
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({"rows": [
        {"row": "AMD", "match": {"method.name": "amended_darts", "task_name": "eval"},
         "values": {"test error": [2.6, 0.1], "test error (best)": [2.5, None], "params M": [3.5, None]}},
        {"row": "DARTS", "match": {"method.name": "darts", "task_name": "eval"}, "values": {"test error": [3.0, 0.1]}}]}))
    _, result = compare_paper([tmp_path / "retrain"], ref, tmp_path / "out")
    per_row = tmp_path / "per_row.yaml"  # error_of on one row alone: 100 − ours there, ours as it is elsewhere
    per_row.write_text(yaml.safe_dump({"rows": [
        {"row": "a", "match": {"method.name": "darts"}, "error_of": True, "values": {"params M": [0.0, None]}},
        {"row": "b", "match": {"method.name": "darts"}, "values": {"params M": [0.0, None]}}]}))
    _, (a, b) = compare_paper([tmp_path / "retrain"], per_row, tmp_path / "per_row")
    assert a["ours"] == pytest.approx((95.0, 0.0, 1)) and b["ours"] == pytest.approx((5.0, 0.0, 1))
    mean, best, params, darts = (next(r for r in result if (r["row"], r["column"]) == key) for key in (
        ("AMD", "test error"), ("AMD", "test error (best)"), ("AMD", "params M"), ("DARTS", "test error")))
    assert mean["ours"] == pytest.approx((2.75, 0.25, 2)) and best["ours"] == (2.5, None, 2) and best["diff"] == 0.0
    assert params["ours"] == pytest.approx((3.5, 0.5, 2)) and darts["ours"] == pytest.approx((9.0, 0.0, 1))
    assert "| AMD | test error (best) | 2.50 | 2.50 (best of 2) | +0.00 | - |" in (tmp_path / "out" / "report.md").read_text()


def test_genotype_cells_are_drawn_edge_for_edge(tmp_path):
    """The cell drawing's edges are the genotype's: DARTS_V2's two (op, input) pairs per node into nodes 0-3 plus the
    concatenation into the output, per cell type; NB201's six edges less the ``none`` ones. ``nasrun report`` draws
    each group's cell beside its curves."""
    from nasrun.report import cell_edges, draw_genotype
    from nasrun.spaces import get_space

    darts = get_space("darts").parse_genotype("DARTS_V2")
    cells = cell_edges(darts)
    labels, edges = cells["normal"]
    assert set(cells) == {"normal", "reduce"} and labels == ["c_{k-2}", "c_{k-1}", "0", "1", "2", "3", "c_{k}"]
    assert edges[:2] == [(0, 2, "sep_conv_3x3"), (1, 2, "sep_conv_3x3")] and edges[-4:] == [(n, 6, "") for n in (2, 3, 4, 5)]
    assert [(j, op) for j, _, op in edges[:8]] == [(j, op) for op, j in darts.normal]
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    (labels, edges), = cell_edges(get_space("nb201").parse_genotype(arch)).values()
    assert labels == ["0", "1", "2", "3"] and len(edges) == 5 and (1, 2, "none") not in edges
    nb101 = get_space("nb1shot1_s1").parse_genotype(
        "input,conv3x3-bn-relu,maxpool3x3,conv1x1-bn-relu,output|01001/00100/00010/00001/00000")
    (labels, edges), = cell_edges(nb101).values()
    assert labels[0] == "input" and labels[-1] == "output" and (0, 1, "") in edges and (0, 4, "") in edges
    draw_genotype(nb101, tmp_path / "nb101.png")
    draw_genotype(darts, tmp_path / "cell.svg", "DARTS_V2")
    assert (tmp_path / "cell.svg").read_text().lstrip().startswith("<?xml")
    run = tmp_path / "runs" / "0"
    fake_run(run, "darts", 0, 90.0, 91.0, 60)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "genotype": arch}))
    run_report([tmp_path / "runs"], tmp_path / "out")
    assert len(list((tmp_path / "out" / "plots").glob("*_cell.png"))) == 1


def test_the_logger_does_not_split_groups(tmp_path):
    """Runs that differ only in their trackers (``logger``) are one group, as runs that differ only in the device."""
    for seed in (0, 1):
        fake_run(tmp_path / "runs" / str(seed), "darts", seed, 90.0, 91.0 + seed, 60)
    cfg = OmegaConf.load(tmp_path / "runs" / "1" / "config.yaml")
    cfg.logger = {"tensorboard": {"name": "tensorboard", "log_dir": None}}
    OmegaConf.save(cfg, tmp_path / "runs" / "1" / "config.yaml")
    rows, *_ = run_report([tmp_path / "runs"], tmp_path / "out", plots=False)
    assert len(rows) == 1 and rows[0]["n"] == 2 and rows[0]["cifar10 test"] == pytest.approx((91.5, 0.5, 2))
