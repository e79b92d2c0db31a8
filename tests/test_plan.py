"""``DRY=1 scripts/tables/X.sh`` (nasrun.plan): every job of a table script and its GPU-hours, nothing run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nasrun.plan import jobs, plan

ROOT = Path(__file__).parent.parent


def test_sweeps_expand_as_hydras_basic_sweeper():
    got = jobs(["+experiment=a,b", "seed=0,1,2", "trainer.epochs=3", "method.t_sp=range(1,3)"])
    assert len(got) == 2 * 3 * 2 and got[0] == ["+experiment=a", "seed=0", "trainer.epochs=3", "method.t_sp=1"]
    assert got[-1] == ["+experiment=b", "seed=2", "trainer.epochs=3", "method.t_sp=2"]


def test_plan_counts_epochs_and_hours(monkeypatch, capsys):
    monkeypatch.delenv("EPOCH_S", raising=False)
    hours = plan(["nasrun", "search", "-m", "method=darts,darts_2nd", "trainer.epochs=10", "hydra.sweep.dir=x"])
    assert hours == 10 * 105 / 3600 + 10 * 105 * 2.8 / 3600  # NB201, measured; the unrolled step 2.8× as long
    monkeypatch.setenv("EPOCH_S", "36")
    assert plan(["nasrun", "eval", "space=darts", "genotype=DARTS_V2", "retrain.epochs=600"]) == 600 * 36 / 3600
    assert plan(["nasrun", "report", "dir"]) == 0.0
    out = capsys.readouterr().out
    assert "method=darts_2nd trainer.epochs=10: 10 epochs" in out and "would run: nasrun report dir" in out


def test_a_dry_table_script_lists_its_jobs_and_runs_nothing(tmp_path):
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "out"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "tse_darts_table4.sh")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nasrun search: 24 jobs" in proc.stdout and "total: about 13.3 GPU-hours" in proc.stdout
    assert "would run: nasrun report" in proc.stdout and not (tmp_path / "out").exists()


def test_a_dry_retrain_step_plans_one_retrain_per_planned_search(tmp_path, monkeypatch):
    """Searches of two spaces, then the retrain step: one eval sweep per space and dataset, one job per search (its
    genotype a placeholder), the protocol's epochs; space=S keeps S's searches alone, dataset=D moves them to D."""
    env = {**os.environ, "DRY": "1", "OUT": str(tmp_path / "out"), "EPOCH_S": "36",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "amended_darts_table1.sh")], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "nasrun search: 6 jobs" in out and out.count("nasrun eval: 3 jobs") == 2
    assert "space=amended_deep dataset=cifar10 genotype=" in out and "retrain=darts seed=0: 600 epochs" in out
    assert "total: about 42.0 GPU-hours" in out  # (6 × 100 + 6 × 600) epochs × 36 s
    from nasrun.plan import plan_retrain

    searches = tmp_path / "searches.tsv"
    searches.write_text("S\tspace=darts_fixed dataset=cifar10\ta\nS\tspace=amended_deep dataset=cifar10\tb\n"
                        "T\tspace=amended_deep dataset=cifar10\tb\n")
    import io

    buf = io.StringIO()
    monkeypatch.setenv("PLAN_SEARCHES", str(searches))
    monkeypatch.setenv("EPOCH_S", "36")
    hours = plan_retrain("S", ["nasrun", "eval", "-m", "space=amended_deep", "dataset=imagenet",
                               "retrain=imagenet_amended"], buf)
    assert "nasrun eval: 1 jobs" in buf.getvalue() and "space=amended_deep genotype=S/search0 dataset=imagenet" \
        in buf.getvalue() and hours == 250 * 36 / 3600


def test_the_retrain_step_finds_the_finished_searches_by_space_and_dataset(tmp_path, monkeypatch):
    """``--searched``: the finished searches per space and dataset; ``--runs``: all of them in one comma list (the
    runs a table replays ``nasrun select`` on), ``MATCH`` keeping those with the given values (booleans as written
    on the command line)."""
    import yaml

    from nasrun.plan import finished_searches, searched

    for i, (space, done) in enumerate((("darts_s1", True), ("darts_s2", True), ("darts_s1", True), ("darts_s1", False))):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"task_name": "search", "space": {"name": space},
                                                         "dataset": {"name": "svhn"},
                                                         "method": {"single_level": i == 2}}))
        (run / "env.json").write_text("{}")
        if done:
            (run / "summary.json").write_text("{}")
            (run / "genotype.json").write_text(json.dumps({"genotype": "x"}))
    assert searched(tmp_path) == [f"space=darts_s1 dataset=svhn\t{tmp_path / '0'},{tmp_path / '2'}",
                                  f"space=darts_s2 dataset=svhn\t{tmp_path / '1'}"]
    assert sorted(finished_searches(tmp_path).split(",")) == [str(tmp_path / str(i)) for i in range(3)]
    monkeypatch.setenv("MATCH", "method.single_level=true space.name=darts_s1,darts_s2")
    assert finished_searches(tmp_path) == str(tmp_path / "2")
    monkeypatch.setenv("MATCH", "space.name=darts_s2")
    assert finished_searches(tmp_path) == str(tmp_path / "1") and searched(tmp_path) == [
        f"space=darts_s2 dataset=svhn\t{tmp_path / '1'}"]


def test_the_second_round_takes_the_best_retrain_per_group_or_per_selection(tmp_path, monkeypatch):
    """``--best``: per search setting the genotype of the lowest-error retrain, a search's genotypes pooled; with
    ``BY=search.selection`` one per selection ([SS] Table 5), and ``MATCH`` keeps the named selections alone."""
    import yaml

    from nasrun.plan import best_retrained

    search = tmp_path / "search"
    (search / "genotypes").mkdir(parents=True)
    (search / "config.yaml").write_text(yaml.safe_dump({"task_name": "search", "method": {"name": "darts"},
                                                         "space": {"name": "darts_7op"}, "dataset": {"name": "cifar10"}}))
    (search / "summary.json").write_text("{}")
    (search / "genotype.json").write_text(json.dumps({"genotype": "x"}))
    errors = {"peak_sep_conv_5x5": (2.9, 2.5), "peak_dil_conv_5x5": (2.7, 3.1), "peak_sep_conv_3x3": (2.4, 2.6)}
    for op in errors:
        (search / "genotypes" / f"{op}_epoch7.json").write_text(json.dumps({"selector": f"{op}@7", "genotype": "x"}))
    for op, errs in errors.items():
        for seed, err in enumerate(errs):
            run = tmp_path / "retrain" / f"{op}_{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump({
                "task_name": "eval", "seed": seed, "genotype": str(search / "genotypes" / f"{op}_epoch7.json"),
                "space": {"name": "darts_7op"}, "dataset": {"name": "cifar10"}}))
            (run / "summary.json").write_text(json.dumps({"test_error": err}))
    g = {op: str(search / "genotypes" / f"{op}_epoch7.json") for op in errors}
    assert best_retrained(tmp_path / "retrain") == [f"space=darts_7op dataset=cifar10\t{g['peak_sep_conv_3x3']}"]
    (line,) = best_retrained(tmp_path / "retrain", by=["search.selection"])
    assert line.startswith("space=darts_7op dataset=cifar10\t") and sorted(line.split("\t")[1].split(",")) == sorted(g.values())
    monkeypatch.setenv("MATCH", "search.selection=peak_sep_conv_5x5,peak_dil_conv_5x5")
    lines = best_retrained(tmp_path / "retrain", by=["search.selection"])
    assert len(lines) == 1 and sorted(lines[0].split("\t")[1].split(",")) == sorted([g["peak_sep_conv_5x5"],
                                                                                    g["peak_dil_conv_5x5"]])
    monkeypatch.setenv("MATCH", "search.selection=peak_none")
    with pytest.raises(RuntimeError, match="matches MATCH="):
        best_retrained(tmp_path / "retrain")


def test_the_pick_of_a_temperature_sweep_is_the_search_with_the_best_column(tmp_path):
    """[SP] Table V's pick: per space and dataset, pooling method.t_sp (and the seed), the search whose last epoch has
    the highest monitor accuracy; a column no search has is an error."""
    import yaml

    from nasrun.plan import picked_searches

    best = {}
    for i, (space, t_sp, seed, acc) in enumerate([("darts_s1", 4e-4, 0, 50.0), ("darts_s1", 5e-4, 0, 61.0),
                                                  ("darts_s1", 6e-4, 1, 55.0), ("darts_s2", 4e-4, 0, 40.0),
                                                  ("darts_s2", 7e-4, 1, 45.0)]):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump({"task_name": "search", "seed": seed, "space": {"name": space},
                                                         "dataset": {"name": "svhn"},
                                                         "method": {"name": "sp_darts", "t_sp": t_sp}}))
        (run / "summary.json").write_text("{}")
        (run / "genotype.json").write_text(json.dumps({"genotype": "x"}))
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "monitor_acc": 99.0}) + "\n"
                                           + json.dumps({"epoch": 1, "monitor_acc": acc}) + "\n")
        if acc > best.get(space, (0, None))[0]:
            best[space] = (acc, run)
    assert picked_searches(tmp_path, "supernet monitor", ["method.t_sp"]) == [
        f"space=darts_s1 dataset=svhn\t{best['darts_s1'][1]}", f"space=darts_s2 dataset=svhn\t{best['darts_s2'][1]}"]
    with pytest.raises(RuntimeError, match="column 'test error'"):
        picked_searches(tmp_path, "test error")


TINY_NB201 = ["space.C=4", "space.N=1", "dataset=synthetic", "trainer.epochs=1", "trainer.batch_size=16",
              "trainer.device=cpu", "trainer.progress=false", "benchmark=none", "trainer.threads=1"]


TINY_DATA32 = ["dataset=synthetic", "dataset.synthetic.image_size=32", "dataset.synthetic.n_train=64"]
TINY_RETRAIN = " ".join(["retrain.C=4", "retrain.layers=5", "retrain.epochs=1", "retrain.batch_size=16",
                         "trainer.device=cpu", "trainer.progress=false", *TINY_DATA32[1:]])


TINY_DARTS = ["space.C=4", "space.layers=5", *TINY_DATA32, *TINY_NB201[3:]]


PART = {"darts_pt_table3": {"SPACES": "darts_s2", "DATASETS": "synthetic"},  # what of a big table the tiny run runs
        "sp_darts_table5": {"SPACES": "darts_s2", "DATASETS": "synthetic"}, "tse_darts_table3": {"DATASETS": "synthetic"},
        "ss_darts_table3": {"LRS": "0.003"}, "darts_pt_table4": {"SEEDS": "0"},
        "darts_pt_table2": {"SEEDS": "0", "METHODS": "sdarts_rs"}, "sp_darts_table1": {"SEEDS": "0"},
        "ss_darts_table2": {"SEEDS": "0"}}


LEFT_OUT = {"darts_pt_table2": ("DARTS (magnitude)", "DARTS+PT")}  # the rows the PART above does not run


@pytest.mark.slow
@pytest.mark.parametrize("script, overrides, retrain, retrains", [
    ("tse_darts_table1", TINY_NB201, "", 0), ("sp_darts_table1", TINY_NB201, "", 0), ("sp_darts_table6", TINY_NB201, "", 0),
    ("ss_darts_table2", TINY_NB201, "", 0), ("tse_darts_table4", ["space.C=4", *TINY_NB201[2:]], "", 0),
    ("darts_pt_table4", [*TINY_NB201, "selector.proj_intv=1", "selector.max_valid_batches=1"], "", 0),  # NB201
    ("darts_pt_table4", [*TINY_DARTS, "selector.proj_intv=1", "selector.max_valid_batches=1"], TINY_RETRAIN, 3),
    ("darts_pt_table2", [*TINY_DARTS, "selector.proj_intv=1", "selector.max_valid_batches=1"], TINY_RETRAIN,
     3),  # SEEDS=0 METHODS=sdarts_rs (DARTS+PT: [PT] Table 4's case): SDARTS-RS+PT, SGAS, the argmax replay
    ("amended_darts_table1", TINY_DARTS, TINY_RETRAIN, 6),  # seeds 0-2 of S1 and S2
    ("sp_darts_table3", TINY_DARTS, TINY_RETRAIN, 2),  # SEEDS=0,1
    ("ss_darts_table4", TINY_DARTS, TINY_RETRAIN, 2 * 4),  # SEEDS=0,1: 2 of the 5 repeats × 4 genotypes
    ("tse_darts_table2", ["space.C=4", *TINY_DATA32, *TINY_NB201[3:]], TINY_RETRAIN, 8 + 4 * 2 * 3),  # SEEDS=0,1
    ("darts_pt_table3", [*TINY_DARTS[:2], *TINY_DATA32[1:], *TINY_NB201[3:], "selector.proj_intv=1",
                         "selector.max_valid_batches=1"], TINY_RETRAIN, 3),  # S2 × synthetic: argmax, PT, fix α
    ("sp_darts_table5", [*TINY_DARTS[:2], *TINY_DATA32[1:], *TINY_NB201[3:]], TINY_RETRAIN, 1),  # the pick of 4 × 2
    ("tse_darts_table3", [*TINY_NB201[:2], *TINY_NB201[3:]], "", 0),  # DATASETS=synthetic
    ("ss_darts_table3", TINY_NB201, "", 0)])  # LRS=0.003
def test_table_scripts_run_end_to_end_and_report_every_row(tmp_path, script, overrides, retrain, retrains):
    """Each table script with a paper table file runs its sweeps on tiny settings (synthetic data, one epoch,
    C=4), retrains what it searched where the paper reports retrained networks (the protocol's number of retrains,
    each finished), and its report has every row and column of the paper's table beside ours, with a value of ours
    in each row our runs can match (a method nasrun has, on the dataset the test ran)."""
    import csv

    from nasrun.report import find_runs, load_run, read_paper

    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "RETRAIN": retrain, "SEEDS": "0,1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **PART.get(script, {})}
    if script == "darts_pt_table4":  # one row per case: NB201 (no retrains) or the DARTS space (retrained)
        env["SPACES"] = "darts" if retrain else "nb201"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / f"{script}.sh"), *overrides], capture_output=True,
                          text=True, env=env, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref = read_paper(ROOT / "scripts" / "tables" / "ref" / f"{script}.yaml")
    written = list((tmp_path / "out").rglob("report_paper.csv"))
    assert len(written) == 1
    rows = list(csv.DictReader(open(written[0])))
    assert [(r["row"], r["column"]) for r in rows] == [(r["row"], c) for r in ref["rows"] for c in r["values"]]
    assert "paper beside ours" in (written[0].parent / "report.md").read_text()
    evals = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("summary.json")
             if (p.parent / "config.yaml").read_text().count("task_name: eval")]
    assert len(evals) == retrains and all(e["test_error"] is not None for e in evals)
    methods = {p.stem for p in (ROOT / "src" / "nasrun" / "conf" / "method").glob("*.yaml")}
    spaces = {run["config"].get("space.name") for run in map(load_run, find_runs([tmp_path / "out"]))}
    ran = [r for r, row in zip(rows, (row for row in ref["rows"] for _ in row["values"]))
           if row["match"].get("method.name") in methods and row["match"].get("dataset.name") in (None, "synthetic")
           and row["match"].get("space.name") in (None, *spaces) and not row.get("not_run")
           and row["row"] not in LEFT_OUT.get(script, ())]
    if retrains:  # TSE-DrNAS, TSE-PDARTS: no method; [PT] Table 3, [SP] Table V: rows name real datasets
        assert all(r["ours n"] not in ("", "0") for r in ran), rows
    if script in IMAGENET_NEXT and retrains:  # (the NB201 case of [PT] Table 4 has no retrains)
        imagenet_table_follows(tmp_path, script, env)


# the ImageNet table that retrains a table's genotypes: (script, the env naming the earlier table's folder, retrains,
# rows of ours): [AMD] Table 2: the 3 S2 searches; [SS] Table 5: the best SepConv5 and DilConv5 of Table 4's
# retrains; [PT] Table 5: the best DARTS+PT retrain (the DARTS row is the DARTS paper's cell)
IMAGENET_NEXT = {"amended_darts_table1": ("amended_darts_table2", "SEARCHED", "search", 3, 1),
                 "ss_darts_table4": ("ss_darts_table5", "T4", "", 2, 2),
                 "darts_pt_table4": ("darts_pt_table5", "T4", "", 1, 1)}


def imagenet_table_follows(tmp_path, first, env):
    """The ImageNet table script run on the first table's finished runs, with tiny ImageNet class folders: it
    retrains the genotypes the paper's ImageNet table names (top-1, top-5 error and params in each row)."""
    import csv

    from nasrun.report import read_paper

    from .test_distributed import write_image_folders

    script, name, sub, retrains, rows_ours = IMAGENET_NEXT[first]
    root = write_image_folders(tmp_path / "data")
    tiny = ["retrain.C=4", "retrain.layers=5", "retrain.epochs=6", "retrain.warmup_epochs=2", "retrain.batch_size=6",
            "retrain.auxiliary_weight=0", f"dataset.root={root}", "dataset.crop=32", "dataset.resize=36",
            "dataset.workers=0", "trainer.device=cpu", "trainer.progress=false"]
    out = tmp_path / "imagenet"
    env = {**env, "OUT": str(out), name: str(Path(env["OUT"]) / sub), "RETRAIN": " ".join(tiny)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / f"{script}.sh")], capture_output=True, text=True,
                          env=env, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    evals = [json.loads(p.read_text()) for p in out.rglob("summary.json")]
    assert len(evals) == retrains and all(e["dataset"] == "imagenet" and e["top5_error"] is not None for e in evals)
    ref = read_paper(ROOT / "scripts" / "tables" / "ref" / f"{script}.yaml")
    rows = list(csv.DictReader(open(out / "report_paper.csv")))
    assert [(r["row"], r["column"]) for r in rows] == [(r["row"], c) for r in ref["rows"] for c in r["values"]]
    filled = {r["row"] for r in rows if r["ours n"] not in ("", "0")}
    assert len(filled) == rows_ours and all(r["ours n"] not in ("", "0") for r in rows if r["row"] in filled), rows


@pytest.mark.slow
def test_the_figure_script_draws_each_figure_from_runs_with_the_hessian_on(tmp_path):
    """[TSE] Figures: each figure's searches run with the Hessian eigenvalue logged, and each folder gets its comparison
    figure (and the cells); the DARTS-space figures from Table 2's searches say how to get them when those are absent."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "T2": str(tmp_path / "no_table2"), "SEEDS": "0",
           "HESSIAN_EVERY": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "tse_darts_figures.sh"), "space.C=4",
                           *TINY_DATA32, *TINY_NB201[3:]], capture_output=True, text=True, env=env, timeout=1200,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "run scripts/tables/tse_darts_table2.sh first" in proc.stdout
    for fig in ("fig5_nb201", "fig2_nb101_3", "fig3a_s2"):
        plots = tmp_path / "out" / fig / "plots"
        assert (plots / "all_groups.png").stat().st_size > 0 and len(list(plots.glob("*_cell.png"))) == 2
        records = [json.loads(line) for p in (tmp_path / "out" / fig).rglob("metrics.jsonl")
                   for line in p.read_text().splitlines()]
        assert len(records) == 2 and all(r.get("hessian_eigenvalue") is not None for r in records)


@pytest.mark.slow
def test_the_amended_figure_script_draws_the_long_runs_per_eta(tmp_path):
    """[AMD] Figures 1-2: first-order DARTS and Amended-DARTS at η = 0, 0.1, 1 on the DARTS space, each folder with
    its report's comparison figure (none's mean weight among the operation magnitudes) and one cell per η."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "amended_darts_figures.sh"), *TINY_DARTS],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for fig, groups in (("fig1_darts", 1), ("fig2_eta", 3)):  # one figure per group, and all groups in one
        plots = tmp_path / "out" / fig / "plots"
        curves = [p for p in plots.glob("*.png") if not p.name.endswith("_cell.png")]
        assert len(curves) == groups + (groups > 1) and len(list(plots.glob("*_cell.png"))) == groups
    configs = [p.read_text() for p in (tmp_path / "out" / "fig2_eta").rglob("config.yaml") if p.parent.name.isdigit()]
    assert sorted(float(line.split(":")[1]) for c in configs for line in c.splitlines()
                  if line.startswith("  eta:")) == [0.0, 0.1, 1.0]
    records = [json.loads(line) for p in (tmp_path / "out").rglob("metrics.jsonl") for line in p.read_text().splitlines()]
    assert len(records) == 4 and all("none" in r["op_magnitude"] for r in records)


@pytest.mark.slow
def test_the_ss_exploratory_figure_script_draws_one_figure_per_experiment(tmp_path):
    """[SS] §2: Exp.1 (warm-up epochs with α frozen, here 2 and 3, each followed by the joint epochs, here 4) and
    Exp.6 (no skip-connect) as their own figure folders, one curve and cell per setting."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "SEEDS": "0", "EXPS": "1 6", "WARMUPS": "2 3", "JOINT": "4",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    tiny = [o for o in TINY_NB201 if not o.startswith("trainer.epochs")]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "ss_darts_figures.sh"), *tiny, "space.N=1"],
                          capture_output=True, text=True, env=env, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fig2bcd_exp1", "fig3c_exp6"]
    assert (tmp_path / "out" / "fig2bcd_exp1" / "plots" / "all_groups.png").stat().st_size > 0
    assert len(list((tmp_path / "out" / "fig2bcd_exp1" / "plots").glob("*_cell.png"))) == 2
    runs = [[json.loads(line) for line in p.read_text().splitlines()]
            for p in (tmp_path / "out" / "fig2bcd_exp1").rglob("metrics.jsonl")]
    assert sorted(map(len, runs)) == [6, 7]
    for history in runs:  # α unchanged through the warm-up, moving once the α steps begin
        warmup = len(history) - 4
        assert all(r["op_magnitude"] == history[0]["op_magnitude"] for r in history[:warmup])
        assert history[-1]["op_magnitude"] != history[0]["op_magnitude"]
    noskip = [json.loads(line) for p in (tmp_path / "out" / "fig3c_exp6").rglob("metrics.jsonl")
              for line in p.read_text().splitlines()]
    assert noskip and all("skip_connect" not in r["op_magnitude"] for r in noskip)


@pytest.mark.slow
def test_the_pt_trajectory_script_selects_from_every_kept_supernet(tmp_path):
    """[PT] Figs. 4/8: DARTS and fix-α searches keep their supernet every epoch; PT replays on each kept supernet of
    both, argmax on DARTS's; the report draws the trajectory figure."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "SEEDS": "0", "EVERY": "1", "DATASETS": "synthetic",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    tiny = [o for o in TINY_NB201 if not o.startswith(("trainer.epochs", "dataset="))]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "tables" / "darts_pt_figures.sh"), *tiny, "trainer.epochs=2",
                           "selector.proj_intv=1", "selector.max_valid_batches=1"], capture_output=True, text=True,
                          env=env, timeout=1200, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    picks = {(p.parent.parent.name, json.loads(p.read_text())["snapshot"]) for p in (tmp_path / "out").rglob("summary.json")
             if p.parent.parent.name in ("pt", "argmax")}
    assert picks == {("pt", 0), ("pt", 1), ("argmax", 0), ("argmax", 1)}
    assert len([p for p in (tmp_path / "out" / "pt").rglob("summary.json")]) == 4  # 2 runs × 2 supernets
    assert (tmp_path / "out" / "plots" / "trajectory.png").stat().st_size > 0
