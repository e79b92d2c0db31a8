"""``DRY=1 scripts/tables/X.sh``: what a table script would run, job by job, and its GPU-hours before running it.

``python -m nasrun.plan nasrun search -m OVERRIDES...`` expands the sweep as Hydra's basic sweeper does (every
comma list, range or choice sweep crossed with the others), composes each job's config, and prints one line per
job: its overrides, epochs and estimated hours, from a per-epoch time (``EPOCH_S`` seconds if set, else the
figure measured for the space family, see :data:`EPOCH_SECONDS`). Any other command is printed as it would run.
The hours are appended to the file ``$PLAN_TOTAL`` when set, so a script can print its total at the end; each
search job's space and dataset to ``$PLAN_SEARCHES``, so the plan of a later retrain step (``--retrain DIR``) lists
one retrain per search. ``--searched DIR`` lists the finished searches under DIR for the retrain step of a real run.
"""

import itertools
import os
import sys

# seconds per epoch on one H100 (README): the NB201 supernet (darts, eager, batch 64), NB-1Shot1 (batch 96);
# the DARTS space and retraining have no measurement yet: rough guesses, marked as such in the output
EPOCH_SECONDS = {"nb201": (105.0, True), "nb1shot1": (40.0, True), "darts": (300.0, False), "amended": (300.0, False),
                 "retrain": (120.0, False), "retrain_imagenet": (2400.0, False)}
# ImageNet retraining: [AMD] §4.2 reports ≈24 V100-days for 250 epochs (≈8300 s per epoch on one V100); an H100 taken
# as ≈3.5 V100s
UNROLLED = 2.8  # darts_2nd over darts per epoch, measured on NB201 (293 s / 105 s)


def jobs(overrides):
    """The overrides of every job of a sweep, in Hydra's order (the last override varies fastest)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    lists = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            lists.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            lists.append([o.input_line])
    return [list(job) for job in itertools.product(*lists)]


def epoch_seconds(cfg, task):
    """``(seconds per epoch, measured?)`` for one job's config."""
    if "EPOCH_S" in os.environ:
        return float(os.environ["EPOCH_S"]), True
    if task == "eval":
        return EPOCH_SECONDS["retrain_imagenet" if cfg.retrain.imagenet else "retrain"]
    space = str(cfg.space.name)
    family = next((f for f in EPOCH_SECONDS if space.startswith(f)), "darts")
    seconds, measured = EPOCH_SECONDS[family]
    if cfg.get("method") is not None and cfg.method.get("unrolled"):
        seconds *= UNROLLED
    return seconds, measured


def plan(argv, out=None):
    """Print the plan of one command line (``nasrun TASK [-m] OVERRIDES...``); return its GPU-hours."""
    from hydra import compose, initialize_config_dir

    out = out or sys.stdout
    from .cli import CONF_DIR

    if len(argv) < 2 or argv[0] != "nasrun" or argv[1] not in ("search", "eval"):
        print(f"would run: {' '.join(argv)}", file=out)
        return 0.0
    task = argv[1]
    overrides = [a for a in argv[2:] if not a.startswith("-")]
    keep = [a for a in overrides if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    sweep_dir = next((a.split("=", 1)[1] for a in overrides if a.startswith("hydra.sweep.dir=")), None)
    total = 0.0
    print(f"{' '.join(argv[:2])}: {len(jobs(keep))} jobs", file=out)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for job in jobs(keep):
            cfg = compose(config_name=task, overrides=job)
            epochs = int(cfg.retrain.epochs if task == "eval" else cfg.trainer.epochs)
            seconds, measured = epoch_seconds(cfg, task)
            hours = epochs * seconds / 3600
            total += hours
            note = "" if measured else " (rough: not measured)"
            if task == "search" and sweep_dir:  # for a later retrain step: its space, dataset and seedless group
                group = " ".join(a for a in job if not a.startswith("seed="))
                _record(sweep_dir, f"space={cfg.space.name} dataset={cfg.dataset.name}", group)
            print(f"  {' '.join(job)}: {epochs} epochs × {seconds:.0f} s ≈ {hours:.1f} GPU-h{note}", file=out)
    print(f"  ≈ {total:.1f} GPU-hours", file=out)
    if os.environ.get("PLAN_TOTAL"):
        with open(os.environ["PLAN_TOTAL"], "a") as f:
            f.write(f"{total}\n")
    return total


def _print_lines(groups, out=None):
    """``{"space=S dataset=D": [run or genotype, ...]}`` as the lines the retrain step reads; returns them."""
    lines = [f"{key}\t{','.join(items)}" for key, items in sorted(groups.items())]
    for line in lines:
        print(line, file=out or sys.stdout)
    return lines


def wanted(run, match=None):
    """Whether a run's config matches ``match`` (``MATCH="key=v1,v2 key=v"`` in the environment when None): each key
    holds one of its values (a table step that takes some rows alone, e.g. [SS] Table 5's two genotypes)."""
    match = os.environ.get("MATCH", "") if match is None else match
    for term in match.split():
        key, sep, values = term.partition("=")
        if not sep:
            raise RuntimeError(f"MATCH term {term!r}: write key=value (values comma-separated)")
        value = run["config"].get(key)
        if (str(value).lower() if isinstance(value, bool) else str(value)) not in values.split(","):
            return False
    return True


def _finished(sweep_dir, tasks):
    """The finished runs under ``sweep_dir`` whose task is one of ``tasks``, with a genotype.json, that ``MATCH`` keeps."""
    from pathlib import Path

    from .report import find_runs, load_run

    for run in map(load_run, find_runs([sweep_dir])):
        if run["summary"] is not None and run["config"].get("task_name") in tasks and wanted(run) \
                and (Path(run["dir"]) / "genotype.json").is_file():
            yield run


def finished_searches(sweep_dir, out=None):
    """``python -m nasrun.plan --runs DIR`` (``MATCH=...``): the finished searches under ``DIR``, comma-separated, the
    runs a table replays ``nasrun select`` on; returns the line."""
    from pathlib import Path

    line = ",".join(str(Path(r["dir"]).resolve()) for r in _finished(sweep_dir, ("search",)))
    print(line, file=out or sys.stdout)
    return line


def searched(sweep_dir, out=None, each=False):
    """``python -m nasrun.plan --searched DIR [--each]``: the finished searches (and ``nasrun select`` replays) under
    ``DIR`` a table retrains, one line per space and dataset, ``space=S dataset=D<TAB>RUN,RUN,...`` (absolute run
    directories, each with its genotype.json; with ``each``, every file of a run's ``genotypes/`` instead, e.g.
    SS-DARTS's four); returns the lines."""
    from pathlib import Path

    groups = {}
    for run in _finished(sweep_dir, ("search", "select")):
        c = run["config"]
        key = f"space={c['space.name']} dataset={c['dataset.name']}"
        several = sorted((Path(run["dir"]) / "genotypes").glob("*.json")) if each else []
        groups.setdefault(key, []).extend(str(p.resolve()) for p in several or [Path(run["dir"])])
    return _print_lines(groups, out)


def _record(directory, key, group):
    """One planned run in ``$PLAN_SEARCHES`` (when set): the sweep folder it goes to, ``space=S dataset=D``, and its
    group (the overrides less the seed), so that a later step's plan counts what it would find there."""
    if os.environ.get("PLAN_SEARCHES"):
        with open(os.environ["PLAN_SEARCHES"], "a") as f:
            f.write(f"{directory}\t{key}\t{group}\n")


def _records(directory):
    """The planned runs of ``directory`` or a folder inside it (see :func:`_record`), ``[(key, group)]``."""
    path = os.environ.get("PLAN_SEARCHES")
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    inside = (directory.rstrip("/"), f"{directory.rstrip('/')}/")
    return [tuple(r[1:3]) for r in rows if r[0] == inside[0] or r[0].startswith(inside[1])]


def best_retrained(retrain_dir, out=None, by=()):
    """``python -m nasrun.plan --best DIR``: per group of the finished retrains under ``DIR`` (runs that differ only
    in seed and genotype: one search setting), the genotype of the one with the lowest test error, as lines like
    :func:`searched`'s (the DARTS protocol's "retrain the best of four searches with more seeds"). A search's
    genotypes (``search.selection``) pool into one group unless ``by`` (``BY="key ..."``) names the key."""
    from .report import find_runs, group_runs, load_run, run_values

    runs = [r for r in map(load_run, find_runs([retrain_dir])) if r["summary"] is not None
            and r["config"].get("task_name") == "eval" and "test error" in run_values(r) and wanted(r)]
    if not runs:
        raise RuntimeError(f"no finished retrain under {retrain_dir}"
                           + (f" matches MATCH={os.environ['MATCH']!r}" if os.environ.get("MATCH") else ""))
    lines = {}
    pool = [k for k in ("genotype", "search.selection") if k not in by and any(k in r["config"] for r in runs)]
    for _, members in group_runs(runs, pool=pool):
        best = min(members, key=lambda r: run_values(r)["test error"])
        c = best["config"]
        lines.setdefault(f"space={c['space.name']} dataset={c['dataset.name']}", []).append(str(c["genotype"]))
    return _print_lines(lines, out)


def picked_searches(search_dir, column, pool=(), out=None):
    """``python -m nasrun.plan --picked DIR`` (``PICK_BY=column``, ``POOL="key ..."``): per group of the finished
    searches under ``DIR`` (runs that differ only in seed and the ``pool`` keys, e.g. SP-DARTS's ``method.t_sp``), the
    one with the highest ``column`` (e.g. ``supernet monitor``), as lines like :func:`searched`'s: the paper's "pick
    the final net" before retraining it."""
    from pathlib import Path

    from .report import group_runs, run_values

    runs = list(_finished(search_dir, ("search",)))
    if not any(column in run_values(r) for r in runs):
        raise RuntimeError(f"no finished search under {search_dir} has the column {column!r}")
    lines = {}
    for _, members in group_runs(runs, pool=[k for k in pool if any(k in r["config"] for r in runs)]):
        best = max(members, key=lambda r: run_values(r).get(column, float("-inf")))
        c = best["config"]
        lines.setdefault(f"space={c['space.name']} dataset={c['dataset.name']}", []).append(
            str(Path(best["dir"]).resolve()))
    return _print_lines(lines, out)


def plan_retrain(search_dir, argv, out=None, per_search=1, best=False, pool=()):
    """The plan of a table's retrain step (``DRY=1``): one retrain per search the plan of ``search_dir`` listed (in
    ``$PLAN_SEARCHES``), in its space and dataset, with the overrides of ``argv`` (``nasrun eval -m ...``; a
    ``space=`` among them keeps that space's searches alone, a ``dataset=`` replaces theirs); ``per_search``
    genotypes of each search (``EACH_GENOTYPE=N`` in a table script). ``best``: one genotype per group (the best
    one's): ``search_dir`` is an earlier retrain step's folder, or a search folder whose groups pool the ``pool`` keys
    (``retrain_picked``)."""
    out = out or sys.stdout
    records = _records(search_dir)
    if not records and os.path.isdir(search_dir) and not best:  # searches run earlier (another table's)
        import io

        try:
            records = [(line.split("\t")[0], "") for line in searched(search_dir, io.StringIO())
                       for _ in line.split("\t")[1].split(",")]
        except Exception:  # noqa: BLE001 - nothing finished there yet
            records = []
    if not records:
        what = "best retrain of each group" if best else "finished searches"
        print(f"would retrain the {what} under {search_dir}: {' '.join(argv)}", file=out)
        return 0.0
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("space=")), None)
    other_data = next((a for a in argv if a.startswith("dataset=")), None)
    target = next((a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")), None)
    rest = [a for a in argv[3:] if not a.startswith("space=")]
    groups = {}
    if pool:  # the pooled keys do not make groups
        records = [(key, " ".join(a for a in group.split() if not a.startswith(tuple(f"{k}=" for k in pool))))
                   for key, group in records]
    for key, group in (dict.fromkeys(records) if best else records):
        space, dataset = key.split()
        if only is None or space == f"space={only}":
            for _ in range(1 if best else per_search):
                groups.setdefault(space if other_data else key, []).append(group)
    total = 0.0
    for key, members in groups.items():
        placeholders = ",".join(f"{search_dir}/{'best' if best else 'search'}{i}" for i in range(len(members)))
        for group in members:
            _record(target, f"{key.split()[0]} {other_data or key.split()[1]}", group)
        total += plan([*argv[:3], *key.split(), f"genotype={placeholders}", *rest], out)
    return total


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["--runs"]:
            finished_searches(sys.argv[2])
        elif sys.argv[1:2] == ["--searched"]:
            searched(sys.argv[2], each="--each" in sys.argv[3:])
        elif sys.argv[1:2] == ["--best"]:
            best_retrained(sys.argv[2], by=os.environ.get("BY", "").split())
        elif sys.argv[1:2] == ["--picked"]:
            picked_searches(sys.argv[2], os.environ["PICK_BY"], os.environ.get("POOL", "").split())
        elif sys.argv[1] in ("--retrain", "--retrain-best", "--retrain-picked"):
            per = int(os.environ.get("EACH_GENOTYPE") or 1)
            pool = os.environ.get("POOL", "").split() if sys.argv[1] == "--retrain-picked" else ()
            plan_retrain(sys.argv[2], sys.argv[3:], per_search=per, best=sys.argv[1] != "--retrain", pool=pool)
        else:
            plan(sys.argv[1:])
    except Exception as exc:  # noqa: BLE001 - a composition error is the user's: one line
        print(f"nasrun plan: error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        sys.exit(2)
