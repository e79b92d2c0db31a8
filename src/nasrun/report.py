"""``nasrun report DIR...``: turn run directories into the papers' tables (mean ± std over seeds) and figures.

Runs are the folders holding ``summary.json`` and ``config.yaml`` (search, eval or select runs, found
recursively under multirun or outputs folders). They are grouped by the config keys that differ between
them, except the seed and keys that do not change a result (device, progress, paths). Per group: mean ±
std (numpy, ddof=0) and n of the final benchmark valid/test accuracy per dataset, the retrain test error,
the search time and the parameters; ``best-of-n`` reports instead the run with the best validation
accuracy (the DARTS protocol's selection; ``select_by`` names the column). ``pool`` keys do not split
groups (e.g. ``method.t_sp``: SP-DARTS's best of four temperatures). Writes ``report.csv``, ``report.md``
and one PNG per group.
"""

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from .errors import UserError
from .files import read_json, read_yaml

IGNORED = ("seed", "run", "trainer.device", "trainer.progress", "dataset.root", "dataset.download", "benchmark.path",
           "hydra", "logger")


def find_runs(paths):
    """Run directories (holding the config.yaml nasrun writes at a run's start) under ``paths``, sorted;
    finished or not (Hydra's own ``.hydra/config.yaml`` does not count)."""
    runs = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist")
        for conf in ([p / "config.yaml"] if (p / "config.yaml").exists() else []) + list(p.rglob("config.yaml")):
            if ".hydra" not in conf.parts and ((conf.parent / "env.json").exists() or (conf.parent / "summary.json").exists()):
                runs.add(conf.parent)
    if not runs:
        raise UserError(f"no run directories (config.yaml from nasrun) under {', '.join(map(str, paths))}")
    return sorted(runs)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def run_config(path):
    """A run directory's config.yaml, flattened to dotted keys; a retrain or a ``nasrun select`` replay also takes
    its search's settings (followed replay → search; the configs alone are read, not summaries or histories)."""
    path = Path(path)
    config = _flat(OmegaConf.to_container(read_yaml(path / "config.yaml", "leave that folder out of the report"),
                                          resolve=False))
    origin = search_of(config.get("genotype") if config.get("task_name") != "select" else config.get("run"))
    if origin is not None:  # a retrain of a searched genotype, or a selection replayed on a search (nasrun select):
        # the search's keys it lacks (method.*, trainer.epochs),
        searched = run_config(origin)  # a select run's own config holds its search's settings in turn
        # and all of the search's settings as search.<key>: a retrain's own space.* do not tell DARTS-20's from DARTS's
        config = {**{k: v for k, v in searched.items() if k != "seed"}, **config,
                  **{k if k.startswith("search.") else f"search.{k}": v for k, v in searched.items()
                     if not k.startswith(IGNORED)}}
        if config.get("task_name") == "select" and "seed" in searched:  # a replay is its search's seed
            config["seed"] = searched["seed"]
        picked = Path(str(config.get("genotype", ""))).expanduser()
        if picked.suffix == ".json":  # which of the search's selections: its selector label, less "@epoch"
            label = str(read_json(picked, "leave that run out").get("selector") or "")
            config["search.selection"] = label.split("@")[0] or None
    return config


def load_run(path):
    """``{"dir", "config", "summary", "history", "problem"}``; ``summary`` is None (and ``problem`` says why)
    for a run that has not finished, failed, or left a corrupt summary.json. A half-written last line of
    metrics.jsonl (a run killed mid-write) is skipped with a warning."""
    path = Path(path)
    config = run_config(path)
    summary, problem = None, None
    try:
        summary = json.loads((path / "summary.json").read_text())
    except FileNotFoundError:
        problem = _status(path)
    except ValueError as exc:
        problem = f"corrupt {path / 'summary.json'} ({exc})"
    history = []
    metrics = path / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            history.append(json.loads(line))
        except ValueError:
            where = "its last line is half-written" if i == len(lines) - 1 else f"line {i + 1} is not JSON"
            warnings.warn(f"{metrics}: {where}; reading the epochs before it", stacklevel=2)
            break
    return {"dir": str(path), "config": config, "summary": summary, "history": history, "problem": problem}


def search_of(genotype):
    """The search run directory an eval's ``genotype`` names (the run, its ``genotype.json`` or a file of its
    ``genotypes/``), or None (a genotype text, a published name, a file outside a run)."""
    if not isinstance(genotype, str) or "|" in genotype or "(" in genotype:
        return None
    path = Path(genotype).expanduser()
    for run in (path, path.parent, path.parent.parent):
        try:
            if (run / "config.yaml").is_file() and (run / "genotype.json").is_file():
                return run
        except OSError:  # a name too long for a path
            return None
    return None


def _status(path):
    """Why a run has no summary: its sweep status (failed / interrupted, with the error), else unfinished."""
    try:
        status = json.loads((path / "status.json").read_text())
        return f"{status['status']}: {status.get('error') or ''}".strip().rstrip(":")
    except (OSError, ValueError, KeyError):
        return "unfinished (no summary.json)"


def run_values(run):
    """The numbers a table reports for one run: ``{column: float}``."""
    s, out = run["summary"], {}
    results = s.get("results") if isinstance(s.get("results"), dict) else s.get("benchmark")
    for ds, res in (results or {}).items():
        if isinstance(res, dict):
            for k in ("valid_acc", "test_acc"):
                if res.get(k) is not None:
                    out[f"{ds} {k.replace('_acc', '')}"] = float(res[k])
    if s.get("test_error") is not None:  # nasrun eval mode=retrain
        out["test error"] = float(s["test_error"])
    if s.get("top5_error") is not None:
        out["top-5 error"] = float(s["top5_error"])
    if s.get("search_seconds") is not None:
        out["search h"] = (s["search_seconds"] + (s.get("overhead_seconds") or 0.0)) / 3600  # steps + per-epoch work
    if s.get("params_m") is not None:
        out["params M"] = float(s["params_m"])
    last = run["history"][-1] if run["history"] else {}
    if last.get("valid_acc") is not None:
        out["supernet valid"] = float(last["valid_acc"])
    if last.get("monitor_acc") is not None:  # SP-DARTS: the near-discrete supernet (the reference's valid_acc)
        out["supernet monitor"] = float(last["monitor_acc"])
    return out


def group_runs(runs, pool=()):
    """``[(label, [runs])]``: runs sharing every config value except :data:`IGNORED` and ``pool`` keys."""
    keys = sorted({k for r in runs for k in r["config"]})
    unknown = [k for k in pool if k not in keys]
    if unknown:
        raise UserError(f"--pool {unknown[0]}: no run has this config key; give a dotted key such as method.t_sp")
    ignored = IGNORED + tuple(pool)
    varying = [k for k in keys if not k.startswith(ignored) and len({repr(r["config"].get(k)) for r in runs}) > 1]
    groups = {}
    for r in runs:
        groups.setdefault(tuple(repr(r["config"].get(k)) for k in varying), []).append(r)
    # label with the ``*.name`` keys, and then as few other differing keys as tell the groups apart (a retrain's
    # search.* copies after its own keys, the genotype path last)
    def distinct(keys):
        return len({tuple(key[varying.index(k)] for k in keys) for key in groups})

    names = [k for k in varying if k.endswith(".name") and not k.startswith("search.")]
    shown = names
    for k in sorted(set(varying) - set(names), key=lambda k: (k == "genotype", k.startswith("search."), k)):
        if distinct(shown) == len(groups):
            break
        if distinct([*shown, k]) > distinct(shown):
            shown = [*shown, k]
    out = []
    for key, members in groups.items():
        values = dict(zip(varying, key))
        c = members[0]["config"]
        label = " ".join(f"{k.removesuffix('.name')}={_plain(values[k])}" for k in shown) if shown else \
            " ".join(str(c.get(k)) for k in ("method.name", "space.name", "dataset.name") if c.get(k) is not None)
        out.append((label or "all runs", members))
    return sorted(out, key=lambda g: g[0])


def _plain(value):
    """A config value as it reads on the command line (``repr`` of a string drops its quotes)."""
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def duplicate_seeds(members):
    """Seeds that occur more than once in a group (the same experiment run twice, or a copied folder)."""
    seeds = [m["config"].get("seed") for m in members]
    return sorted({s for s in seeds if seeds.count(s) > 1}, key=str)


def select_value(run, column=None):
    """The validation accuracy best-of-n selects by: ``column`` if given, else benchmark valid (first
    dataset), else supernet valid; runs without it rank last."""
    v = run_values(run)
    keys = [column] if column else [k for k in v if k.endswith(" valid")]
    return v.get(keys[0], float("-inf")) if keys else float("-inf")


def summarise(groups, protocol="mean", select_by=None):
    """Table rows: ``{"group", "n", column: (mean, std, n)}``."""
    if protocol not in ("mean", "best-of-n"):
        raise UserError(f"unknown protocol {protocol!r}; choose mean or best-of-n")
    if select_by and not any(select_by in run_values(r) for _, members in groups for r in members):
        have = sorted({c for _, members in groups for r in members for c in run_values(r)})
        raise UserError(f"--select-by {select_by!r}: no run has this column; choose one of {', '.join(have)}")
    rows = []
    for label, members in groups:
        chosen = [max(members, key=lambda r: select_value(r, select_by))] if protocol == "best-of-n" else members
        values = [run_values(r) for r in chosen]
        columns = sorted({c for v in values for c in v})
        row = {"group": label, "n": len(members)}
        for col in columns:
            xs = np.array([v[col] for v in values if col in v], dtype=float)
            row[col] = (float(xs.mean()), float(xs.std()), len(xs))
        if protocol == "best-of-n":
            row["run"] = chosen[0]["dir"]
        dups = duplicate_seeds(members)
        if dups:
            row["note"] = f"seed {', '.join(map(str, dups))} more than once"
        rows.append(row)
    return rows


DATASET_ORDER = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
TRAILING = ("test error", "top-5 error", "supernet valid", "supernet monitor", "search h", "params M")


def _columns(rows):
    """Benchmark columns in the benchmark's dataset order (valid before test), then the rest."""
    def key(c):
        ds, _, kind = c.rpartition(" ")
        if ds in DATASET_ORDER and kind in ("valid", "test"):
            return (0, DATASET_ORDER.index(ds), kind != "valid", "")
        return (1 + (c in TRAILING), TRAILING.index(c) if c in TRAILING else 0, False, c)

    return sorted({c for r in rows for c in r if c not in ("group", "n", "run", "note")}, key=key)


def fmt(cell):
    """``mean ± std (n)``; a single run shows its value alone (a std of one run is no spread); a std of None marks
    the best of n runs."""
    if cell is None:
        return "-"
    mean, std, n = cell
    if std is None:  # the best of n runs
        return f"{mean:.2f} (best of {n})"
    return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f} ({n})"


def write_tables(rows, out, failed=()):
    """report.csv (mean, std, n per column), report.md (the table, then the runs that did not finish)."""
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    extra = [c for c in ("run", "note") if any(c in r for r in rows)]
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n"] + [x for c in cols for x in (f"{c} mean", f"{c} std", f"{c} n")] + extra)
        for r in rows:
            w.writerow([r["group"], r["n"]] + [x for c in cols for x in (r.get(c) or ("", "", 0))]
                       + [r.get(c, "") for c in extra])
    lines = ["| group | n | " + " | ".join(cols + extra) + " |", "|---|---|" + "---|" * len(cols + extra)]
    lines += [f"| {r['group']} | {r['n']} | " + " | ".join([fmt(r.get(c)) for c in cols] + [r.get(c, "") for c in extra])
              + " |" for r in rows]
    if failed:
        lines += ["", f"Not in the table ({len(failed)} runs):", ""]
        lines += [f"- `{r['dir']}`: {r['problem']}" for r in failed]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return cols


def _curve(members, get):
    """Per-seed curves of ``get(metrics record)``, as a 2-D array (seeds × epochs, NaN-padded)."""
    curves = []
    for r in members:
        ys = [get(rec) for rec in r["history"]]
        curves.append([np.nan if v is None else float(v) for v in ys])
    width = max((len(c) for c in curves), default=0)
    return np.array([c + [np.nan] * (width - len(c)) for c in curves], dtype=float)


PANELS = [  # (metrics key, panel title, y label, step plot)
    ("benchmark", "benchmark test accuracy", "test accuracy (%)", False),
    ("valid_acc", "supernet valid accuracy", "accuracy (%)", False),
    ("op_magnitude", "operation magnitudes (normal cell)", "mean softmax(α)", False),
    ("hessian_eigenvalue", "dominant Hessian eigenvalue", "λ_max of ∇²_α L_valid", False),
    ("skip_count", "skip connections in the genotype", "count", True),
    ("depth", "cell depth of the genotype", "nodes on the longest path", True),
    ("ies_entropy", "IES: entropy of the mixing weights", "entropy (nats)", False),
    ("discrete_valid_acc", "discretised supernet accuracy (argmax α)", "valid accuracy (%)", False),
    ("skip_minus_conv", "α_skip − α_conv (normal cell)", "mean softmax(α): skip − mean conv", False),
]


def skip_minus_conv(rec):
    """The skip connection's mean mixing weight minus the mean over the convolutions (normal cell), or None."""
    om = rec.get("op_magnitude") or {}
    convs = [v for k, v in om.items() if "conv" in k and v is not None]
    return om["skip_connect"] - sum(convs) / len(convs) if om.get("skip_connect") is not None and convs else None


def _getter(key):
    if key == "benchmark":
        return lambda rec: (rec.get("benchmark") or {}).get("test_acc")
    if key == "skip_minus_conv":
        return skip_minus_conv
    return lambda rec: rec.get(key)


def _bench_dataset(members):
    names = {(rec.get("benchmark") or {}).get("dataset") for r in members for rec in r["history"]} - {None}
    return ", ".join(sorted(names))


def _panel(ax, title, ylabel, counts=False):
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=10)
    ax.set_xlabel("epoch (1 = first, as in the log)")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if counts:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def group_figure(label, members):
    """The figure of one group: each metric per epoch, mean over its runs with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(17, 12))
    for ax, (key, title, ylabel, step) in zip(axes.flat, PANELS):
        if key == "benchmark" and _bench_dataset(members):
            title = f"{title} on {_bench_dataset(members)}"
        _panel(ax, title, ylabel, counts=step)
        if key == "op_magnitude":
            ops = sorted({o for r in members for rec in r["history"] for o in (rec.get("op_magnitude") or {})})
            for op in ops:
                _band(ax, _curve(members, lambda rec, op=op: (rec.get("op_magnitude") or {}).get(op)), op)
            if ops:
                ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
            continue
        _band(ax, _curve(members, _getter(key)), None, step=step)
    fig.suptitle(f"{label}: mean, band = min-max over {len(members)} run{'s' if len(members) != 1 else ''}")
    _encoding_legend(fig)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def _encoding_legend(fig):
    """The figure's legend of what a line and a band mean (every figure has one, whatever was logged)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig.legend([Line2D([], [], color="gray"), Patch(color="gray", alpha=0.2)],
               ["mean over the runs", "min-max over the runs"], loc="lower center", ncol=2, fontsize=9, frameon=False)


def compare_figure(groups):
    """Every group side by side per metric: one panel per metric, one line (mean) and band per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if p[0] != "op_magnitude"]
    fig, grid = plt.subplots(3, 3, figsize=(17, 12))
    axes = list(grid.flat)
    datasets = _bench_dataset([r for _, members in groups for r in members])
    colours = {label: f"C{i % 10}" for i, (label, _) in enumerate(groups)}  # one colour per group in every panel
    for ax, (key, title, ylabel, step) in zip(axes, panels):
        if key == "benchmark" and datasets:
            title = f"{title} on {datasets}"
        _panel(ax, title, ylabel, counts=step)
        for label, members in groups:
            _band(ax, _curve(members, _getter(key)), f"{label} (n={len(members)})", step=step, colour=colours[label])
    legend_ax = axes[len(panels)]  # the free last slot holds the legend
    legend_ax.axis("off")
    from matplotlib.lines import Line2D

    # from the groups themselves, not from a panel (a panel nothing was logged in has no lines)
    handles = [Line2D([], [], color=colours[label]) for label, _ in groups]
    legend_ax.legend(handles, [f"{label} (n={len(members)})" for label, members in groups], loc="center", fontsize=9,
                     title="group (runs)")
    fig.suptitle("all groups: mean, band = min-max over each group's runs")
    _encoding_legend(fig)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


def plot_group(label, members, path):
    """Save :func:`group_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = group_figure(label, members)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _band(ax, ys, name, step=False, colour=None):
    if ys.size == 0 or np.all(np.isnan(ys)):
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    x = np.arange(1, ys.shape[1] + 1)  # epoch 1 is the first, as the log counts
    with warnings.catch_warnings():  # all-NaN columns (epochs some seeds did not reach)
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
    ok = ~np.isnan(mean)
    if step:
        (line,) = ax.step(x[ok], mean[ok], where="mid", label=name, color=colour)
        ax.fill_between(x[ok], lo[ok], hi[ok], step="mid", alpha=0.2, color=line.get_color())
    else:
        (line,) = ax.plot(x[ok], mean[ok], label=name, color=colour)
        ax.fill_between(x[ok], lo[ok], hi[ok], alpha=0.2, color=line.get_color())


def slug(label):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")[:100] or "group"


def run_report(paths, out=None, protocol="mean", plots=True, pool=(), select_by=None):
    """Find, group and summarise runs; write report.csv / report.md (and plots/) to ``out``; return the rows."""
    loaded = [load_run(p) for p in find_runs(paths)]
    runs = [r for r in loaded if r["summary"] is not None]
    failed = [r for r in loaded if r["summary"] is None]
    if not runs:
        raise UserError(f"no finished runs under {', '.join(map(str, paths))}: "
                        + "; ".join(f"{r['dir']}: {r['problem']}" for r in failed[:3]))
    groups = group_runs(runs, pool)
    rows = summarise(groups, protocol, select_by)
    out = Path(out) if out else Path(paths[0])
    cols = write_tables(rows, out, failed)
    if plots:
        import matplotlib.pyplot as plt

        (out / "plots").mkdir(exist_ok=True)
        drawn = [(label, members) for label, members in groups if any(r["history"] for r in members)]
        for label, members in drawn:
            plot_group(label, members, out / "plots" / f"{slug(label)}.png")
        for label, members in groups:
            draw_group_cell(label, members, out / "plots" / f"{slug(label)}_cell.png")
        if len(drawn) > 1:
            fig = compare_figure(drawn)
            fig.savefig(out / "plots" / "all_groups.png", dpi=80)
            plt.close(fig)
        fig = trajectory_figure(runs)
        if fig is not None:
            fig.savefig(out / "plots" / "trajectory.png", dpi=80)
            plt.close(fig)
    return rows, cols, out, failed


def trajectory_figure(runs):
    """[PT] Fig. 4 / 8: the benchmark test accuracy of each selector's pick from the supernet kept after each epoch
    (``nasrun select run=DIR snapshot=E`` replays), mean and min-max band over the searches, one panel per benchmark
    dataset; None without such replays."""
    import matplotlib.pyplot as plt

    from .benchmarks.nb201 import DATASETS

    snaps = [r for r in runs if r["config"].get("task_name") == "select" and r["config"].get("snapshot") is not None]
    if not snaps:
        return None
    found = {ds for r in snaps for ds, res in (r["summary"].get("benchmark") or {}).items()
             if isinstance(res, dict) and res.get("test_acc") is not None}
    datasets = [ds for ds in DATASETS if ds in found] + sorted(found - set(DATASETS))
    groups = group_runs(snaps, pool=[k for k in ("snapshot", "run") if any(k in r["config"] for r in snaps)])
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(5 * max(1, len(datasets)), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets or [None]):
        _panel(ax, f"test accuracy on {ds}" if ds else "no benchmark results in these replays", "test accuracy (%)")
        ax.set_xlabel("epoch of the supernet selected from (1 = first)")
        for label, members in groups:
            by_epoch = {}
            for r in members:
                res = (r["summary"].get("benchmark") or {}).get(ds) or {}
                if res.get("test_acc") is not None:
                    by_epoch.setdefault(int(r["config"]["snapshot"]) + 1, []).append(float(res["test_acc"]))
            if by_epoch:
                xs = sorted(by_epoch)
                (line,) = ax.plot(xs, [float(np.mean(by_epoch[x])) for x in xs], marker="o",
                                  label=f"{label} (n={len(members)})")
                ax.fill_between(xs, [min(by_epoch[x]) for x in xs], [max(by_epoch[x]) for x in xs], alpha=0.2,
                                color=line.get_color())
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("the selection from the supernet of each epoch (nasrun select snapshot=E)")
    fig.tight_layout()
    return fig


def print_report(rows, cols, out, failed=()):
    """The table on the terminal: one row per group where it fits the width, else one block per group
    (column: value lines), so it stays readable at 80 columns; then the runs left out and why."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    extra = [c for c in ("run", "note") if any(c in r for r in rows)]
    cells = [[r["group"], str(r["n"])] + [fmt(r.get(c)) for c in cols] + [str(r.get(c, "")) for c in extra] for r in rows]
    heads = ["group", "n"] + cols + extra
    width = sum(max(len(h), *(len(x[i]) for x in cells)) + 3 for i, h in enumerate(heads)) + 1
    if width <= console.width:
        table = Table(title=f"nasrun report ({out})")
        for i, h in enumerate(heads):
            table.add_column(h, justify="left" if i == 0 or h in extra else "right", no_wrap=i > 0 and h != "run")
        for row in cells:
            table.add_row(*row)
        console.print(table)
    else:
        console.print(f"nasrun report ({out})")
        for row in cells:
            table = Table(title=row[0], show_header=False, title_justify="left")
            table.add_column("column")
            table.add_column("value", overflow="fold")
            for h, v in zip(heads[1:], row[1:]):
                if v not in ("-", ""):
                    table.add_row(h, v)
            console.print(table)
    for r in failed:
        console.print(f"[yellow]not in the table[/yellow]: {r['dir']}: {r['problem']}", soft_wrap=True)
    print(f"wrote {out / 'report.csv'}, {out / 'report.md'}" + (f", {out / 'plots'}/" if (out / "plots").exists() else ""))


def read_paper(path):
    """A paper's table as data (``scripts/tables/ref/<paper>_<table>.yaml``): ``paper``, ``table``, ``metric``,
    and ``rows``, each with ``row`` (its name in the paper), ``match`` (the config values of our runs that produce
    it, dotted keys) and ``values`` (our report column → the paper's ``[mean, std]``, std null where the paper gives
    none); ``error_of: true`` where the paper prints 100 − the column (a test error against our accuracy; in the file
    for every row, or in a row for that row). A column
    named ``"<column> (best)"`` compares the best of our runs (lowest error, else highest accuracy) with the paper's
    best-of-N figure. Retrain runs (``nasrun eval`` of a search run's genotype) match on their search's keys too.
    ``not_run: REASON`` marks a row nasrun cannot produce yet (printed in its place while nothing matches it)."""
    fix = "give a table file like scripts/tables/ref/sp_darts_table1.yaml"
    ref = OmegaConf.to_container(read_yaml(path, fix))
    rows = ref.get("rows")
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: no rows; {fix}")
    for i, row in enumerate(rows):
        bad = [k for k in ("row", "match", "values") if k not in row] or \
            [c for c, v in row["values"].items() if not (isinstance(v, list) and len(v) == 2)]
        if bad:
            raise UserError(f"{path}: row {i + 1} ({row.get('row', '?')}): bad or missing {bad[0]!r}; each row needs "
                            "row, match {key: value} and values {column: [mean, std or null]}")
    return ref


BEST = " (best)"  # a paper column that takes the best of its runs, e.g. "test error (best)"


def _matches(config, match):
    """A row's ``match`` against a flattened config (lists as :func:`_flat` keeps them: JSON text)."""
    return all(config.get(k) == v or str(config.get(k)) == (json.dumps(v) if isinstance(v, list) else str(v))
               for k, v in match.items())


def compare_paper(paths, ref_path, out=None):
    """Paper against ours, per row and column of the table file ``ref_path``: ``[{row, column, paper, ours,
    diff, within}]`` (ours: mean, std, n over the finished runs the row's ``match`` selects; within: ours lies
    in the paper's band, mean ± std widened by its rounding to 0.01; None where the paper gives no std or
    nothing ran). Writes ``report_paper.csv`` and a section of ``report.md`` to ``out`` (default: the first of
    ``paths``)."""
    ref = read_paper(ref_path)
    runs = [r for r in (load_run(p) for p in find_runs(paths)) if r["summary"] is not None]
    result = []
    for row in ref["rows"]:
        members = [r for r in runs if _matches(r["config"], row["match"])]
        for column, (mean, std) in row["values"].items():
            base, best = (column[:-len(BEST)], True) if column.endswith(BEST) else (column, False)
            xs = np.array([v[base] for v in map(run_values, members) if base in v], dtype=float)
            error_of = row.get("error_of", ref.get("error_of"))
            if error_of:  # the paper prints the error of an accuracy column: 100 − ours
                xs = 100.0 - xs
            if best and len(xs):  # the paper's best of its runs: the lowest error, else the highest accuracy
                lower = "error" in base or error_of
                ours = (float(xs.min() if lower else xs.max()), None, len(xs))
            else:
                ours = (float(xs.mean()), float(xs.std()), len(xs)) if len(xs) else None
            diff = None if ours is None else ours[0] - mean
            within = None if diff is None or std is None else bool(abs(diff) <= std + 0.005)  # + the paper's rounding
            result.append({"row": row["row"], "column": column, "paper": (mean, std), "ours": ours, "diff": diff,
                           "within": within, "runs": len(members), "not_run": row.get("not_run")})
    out = Path(out) if out else Path(paths[0])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report_paper.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "column", "paper mean", "paper std", "ours mean", "ours std", "ours n", "diff", "within"])
        for r in result:
            w.writerow([r["row"], r["column"], *r["paper"], *(r["ours"] or ("", "", 0)),
                        "" if r["diff"] is None else r["diff"], "" if r["within"] is None else r["within"]])
    title = f"{ref.get('paper', '')} {ref.get('table', '')}: {ref.get('metric', '')}".strip()
    lines = ["", f"## {title} (paper beside ours)", "", "| row | column | paper | ours | diff | in the paper's band |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {c} |" for c in map(" | ".join, (paper_cells(r) for r in result))]
    md = out / "report.md"
    md.write_text((md.read_text() if md.exists() else "") + "\n".join(lines) + "\n")
    return ref, result


def paper_cells(r):
    """One comparison row as text: row, column, paper, ours, diff, within."""
    mean, std = r["paper"]
    paper = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    within = {None: "-", True: "yes", False: "no"}[r["within"]]
    ours = fmt(r["ours"]) if r["ours"] is not None else (f"no value ({r['runs']} runs)" if r["runs"] else "not run"
                                                          + (f": {r['not_run']}" if r.get("not_run") else ""))
    return [r["row"], r["column"], paper, ours,
            "-" if r["diff"] is None else f"{r['diff']:+.2f}", within]


def print_paper(ref, result):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{ref.get('paper', '')} {ref.get('table', '')}: {ref.get('metric', '')} (paper beside ours)")
    for i, h in enumerate(("row", "column", "paper", "ours", "diff", "in band")):
        table.add_column(h, justify="left" if i < 2 else "right")
    for r in result:
        table.add_row(*paper_cells(r))
    Console().print(table)


def draw_group_cell(label, members, path):
    """The cell of the group's first run that has a genotype (a warning where its genotype does not parse)."""
    from .spaces import get_space

    run = next((r for r in members if (r["summary"] or {}).get("genotype") and r["config"].get("space.name")), None)
    if run is None:
        return
    try:
        genotype = get_space(str(run["config"]["space.name"])).parse_genotype(run["summary"]["genotype"])
    except UserError as exc:
        warnings.warn(f"{run['dir']}: no cell drawing ({exc})", stacklevel=2)
        return
    draw_genotype(genotype, path, f"{label}: {Path(run['dir']).name}")


def cell_edges(genotype):
    """``{cell name: ([node labels], [(from, to, op)])}`` of a parsed genotype: NB201's four nodes (``none`` edges
    left out), a DARTS-family cell's two inputs, four intermediate nodes and the concatenated output, or an
    NB-101 cell's nodes labelled with their ops and its unlabelled edges."""
    if hasattr(genotype, "matrix"):  # NAS-Bench-101 / 1Shot1: the ops sit on the nodes
        edges = [(i, j, "") for i, row in enumerate(genotype.matrix) for j, v in enumerate(row) if v]
        return {"cell": (list(genotype.ops), edges)}
    if hasattr(genotype, "nodes"):  # NB201
        edges = [(j, i + 1, op) for i, node in enumerate(genotype.nodes) for op, j in node if op != "none"]
        return {"cell": ([f"{n}" for n in range(len(genotype.nodes) + 1)], edges)}
    out = {}
    concat = getattr(genotype, "normal_concat", None) or getattr(genotype, "concat", (2, 3, 4, 5))
    for name, genes in genotype.cells().items():
        steps = len(genes) // 2
        labels = ["c_{k-2}", "c_{k-1}", *map(str, range(steps)), "c_{k}"]
        edges = [(j, 2 + g // 2, op) for g, (op, j) in enumerate(genes)]
        cat = getattr(genotype, f"{name}_concat", concat)
        edges += [(n, len(labels) - 1, "") for n in cat]
        out[name] = (labels, edges)
    return out


def draw_genotype(genotype, path, title=""):
    """A drawing of each cell of ``genotype`` (a parsed genotype of any space), nodes left to right and each edge
    labelled with its op, saved as PNG or SVG by ``path``'s suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = cell_edges(genotype)
    fig, axes = plt.subplots(len(cells), 1, figsize=(9, 3.2 * len(cells)), squeeze=False)
    for ax, (name, (labels, edges)) in zip(axes[:, 0], cells.items()):
        n = len(labels)
        first = 2 if labels[0].startswith("c_") else 1  # inputs stacked at the left
        pos = {i: (0.0, 1.0 - 2.0 * i) if i < first else (float(i - first + 1), 0.8 * (-1) ** i) for i in range(n)}
        if labels[-1] == "c_{k}":
            pos[n - 1] = (float(n - first), 0.0)
        for a, b, op in edges:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "0.35",
                                                                      "shrinkA": 14, "shrinkB": 14,
                                                                      "connectionstyle": "arc3,rad=0.12"})
            if op:
                ax.text(0.45 * x0 + 0.55 * x1, 0.45 * y0 + 0.55 * y1, op, fontsize=7, ha="center", va="center",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        for i, label in enumerate(labels):
            colour = "lightblue" if label.startswith("c_{k-") or (first == 1 and i == 0) else (
                "palegreen" if label == "c_{k}" or (first == 1 and i == n - 1) else "khaki")
            ax.text(*pos[i], label, ha="center", va="center", fontsize=9,
                    bbox={"boxstyle": "circle", "fc": colour, "ec": "0.3"})
        ax.set_title(name, fontsize=10)
        ax.set_xlim(-0.6, max(x for x, _ in pos.values()) + 0.6)
        ax.set_ylim(-2.0 if first == 2 else -1.4, 1.5)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
