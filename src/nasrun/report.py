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

IGNORED = ("seed", "run", "trainer.device", "trainer.progress", "dataset.root", "dataset.download", "benchmark.path",
           "hydra")


def find_runs(paths):
    """Run directories (with summary.json and config.yaml) under ``paths``, sorted."""
    runs = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist")
        for summary in ([p / "summary.json"] if (p / "summary.json").exists() else []) + list(p.rglob("summary.json")):
            if (summary.parent / "config.yaml").exists():
                runs.add(summary.parent)
    if not runs:
        raise UserError(f"no run directories (summary.json + config.yaml) under {', '.join(map(str, paths))}")
    return sorted(runs)


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def load_run(path):
    path = Path(path)
    config = _flat(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False))
    summary = json.loads((path / "summary.json").read_text())
    metrics = path / "metrics.jsonl"
    history = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    return {"dir": str(path), "config": config, "summary": summary, "history": history}


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
    shown = [k for k in varying if k.endswith(".name")] or varying[:4]
    out = []
    for key, members in groups.items():
        values = dict(zip(varying, key))
        c = members[0]["config"]
        label = " ".join(f"{k.removesuffix('.name')}={values[k].strip(chr(39))}" for k in shown) if shown else \
            " ".join(str(c.get(k)) for k in ("method.name", "space.name", "dataset.name") if c.get(k) is not None)
        out.append((label or "all runs", members))
    return sorted(out, key=lambda g: g[0])


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
        rows.append(row)
    return rows


def _columns(rows):
    order = sorted({c for r in rows for c in r if c not in ("group", "n", "run")},
                   key=lambda c: (c in ("search h", "params M", "supernet valid", "supernet monitor"), c))
    return order


def fmt(cell):
    if cell is None:
        return "-"
    mean, std, n = cell
    return f"{mean:.2f} ± {std:.2f} ({n})"


def write_tables(rows, out):
    out.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    with open(out / "report.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "n"] + [x for c in cols for x in (f"{c} mean", f"{c} std", f"{c} n")])
        for r in rows:
            w.writerow([r["group"], r["n"]] + [x for c in cols for x in (r.get(c) or ("", "", 0))])
    lines = ["| group | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    lines += [f"| {r['group']} | {r['n']} | " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
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


def plot_group(label, members, path):
    """benchmark test accuracy, supernet valid accuracy, operation magnitudes, Hessian eigenvalue, skip
    count and depth per epoch: mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [("benchmark", "benchmark test acc (%)"), ("valid_acc", "supernet valid acc (%)"), (None, "op magnitude"),
              ("hessian_eigenvalue", "dominant Hessian eigenvalue"), ("skip_count", "skip connections"),
              ("depth", "cell depth")]
    for ax, (key, title) in zip(axes.flat, panels):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if key is None:
            ops = sorted({o for r in members for rec in r["history"] for o in (rec.get("op_magnitude") or {})})
            for op in ops:
                _band(ax, _curve(members, lambda rec, op=op: (rec.get("op_magnitude") or {}).get(op)), op)
            if ops:
                ax.legend(fontsize=7)
            continue
        if key == "benchmark":
            _band(ax, _curve(members, lambda rec: (rec.get("benchmark") or {}).get("test_acc")), None)
        else:
            _band(ax, _curve(members, lambda rec, key=key: rec.get(key)), None)
    fig.suptitle(f"{label} ({len(members)} runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _band(ax, ys, name):
    if ys.size == 0 or np.all(np.isnan(ys)):
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
        return
    x = np.arange(ys.shape[1])
    with warnings.catch_warnings():  # all-NaN columns (epochs some seeds did not reach)
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
    ok = ~np.isnan(mean)
    ax.plot(x[ok], mean[ok], label=name)
    ax.fill_between(x[ok], lo[ok], hi[ok], alpha=0.2)


def slug(label):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label).strip("_")[:100] or "group"


def run_report(paths, out=None, protocol="mean", plots=True, pool=(), select_by=None):
    """Find, group and summarise runs; write report.csv / report.md (and plots/) to ``out``; return the rows."""
    runs = [load_run(p) for p in find_runs(paths)]
    groups = group_runs(runs, pool)
    rows = summarise(groups, protocol, select_by)
    out = Path(out) if out else Path(paths[0])
    cols = write_tables(rows, out)
    if plots:
        (out / "plots").mkdir(exist_ok=True)
        for label, members in groups:
            if any(r["history"] for r in members):
                plot_group(label, members, out / "plots" / f"{slug(label)}.png")
    return rows, cols, out


def print_report(rows, cols, out):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"nasrun report ({out})")
    table.add_column("group")
    table.add_column("n", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(r["group"], str(r["n"]), *(fmt(r.get(c)) for c in cols))
    Console().print(table)
    print(f"wrote {out / 'report.csv'}, {out / 'report.md'}" + (f", {out / 'plots'}/" if (out / "plots").exists() else ""))
