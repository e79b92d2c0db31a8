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
                 "retrain": (120.0, False)}
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
        return EPOCH_SECONDS["retrain"]
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
            if task == "search" and sweep_dir and os.environ.get("PLAN_SEARCHES"):  # for a later retrain step
                with open(os.environ["PLAN_SEARCHES"], "a") as f:
                    f.write(f"{sweep_dir}\tspace={cfg.space.name} dataset={cfg.dataset.name}\n")
            print(f"  {' '.join(job)}: {epochs} epochs × {seconds:.0f} s ≈ {hours:.1f} GPU-h{note}", file=out)
    print(f"  ≈ {total:.1f} GPU-hours", file=out)
    if os.environ.get("PLAN_TOTAL"):
        with open(os.environ["PLAN_TOTAL"], "a") as f:
            f.write(f"{total}\n")
    return total


def searched(sweep_dir, out=None, each=False):
    """``python -m nasrun.plan --searched DIR [--each]``: the finished searches under ``DIR`` a table retrains, one line
    per space and dataset, ``space=S dataset=D<TAB>RUN,RUN,...`` (absolute run directories, each with its
    genotype.json; with ``each``, every file of a run's ``genotypes/`` instead, e.g. SS-DARTS's four); returns the
    lines."""
    from pathlib import Path

    from .report import find_runs, load_run

    groups = {}
    for run in map(load_run, find_runs([sweep_dir])):
        c = run["config"]
        if run["summary"] is not None and c.get("task_name") == "search" and (Path(run["dir"]) / "genotype.json").is_file():
            key = f"space={c['space.name']} dataset={c['dataset.name']}"
            several = sorted((Path(run["dir"]) / "genotypes").glob("*.json")) if each else []
            groups.setdefault(key, []).extend(str(p.resolve()) for p in several or [Path(run["dir"])])
    lines = [f"{key}\t{','.join(dirs)}" for key, dirs in sorted(groups.items())]
    for line in lines:
        print(line, file=out or sys.stdout)
    return lines


def plan_retrain(search_dir, argv, out=None, per_search=1):
    """The plan of a table's retrain step (``DRY=1``): one retrain per search the plan of ``search_dir`` listed (in
    ``$PLAN_SEARCHES``), in its space and dataset, with the overrides of ``argv`` (``nasrun eval -m ...``; a
    ``space=`` among them keeps that space's searches alone, a ``dataset=`` replaces theirs); ``per_search``
    genotypes of each search (``EACH_GENOTYPE=N`` in a table script)."""
    out = out or sys.stdout
    records = []
    if os.environ.get("PLAN_SEARCHES") and os.path.exists(os.environ["PLAN_SEARCHES"]):
        with open(os.environ["PLAN_SEARCHES"]) as f:
            records = [line.rstrip("\n").split("\t") for line in f if line.startswith(f"{search_dir}\t")]
    if not records and os.path.isdir(search_dir):  # searches run earlier (another table's): the finished ones
        import io

        try:
            records = [(search_dir, line.split("\t")[0]) for line in searched(search_dir, io.StringIO())
                       for _ in line.split("\t")[1].split(",")]
        except Exception:  # noqa: BLE001 - nothing finished there yet
            records = []
    if not records:
        print(f"would retrain the finished searches under {search_dir}: {' '.join(argv)}", file=out)
        return 0.0
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("space=")), None)
    other_data = any(a.startswith("dataset=") for a in argv)
    rest = [a for a in argv[3:] if not a.startswith("space=")]
    groups = {}
    for _, key in records:
        space, dataset = key.split()
        if only is None or space == f"space={only}":
            groups.setdefault(space if other_data else key, []).extend([1] * per_search)
    total = 0.0
    for key, n in groups.items():
        placeholders = ",".join(f"{search_dir}/search{i}" for i in range(len(n)))
        total += plan([*argv[:3], *key.split(), f"genotype={placeholders}", *rest], out)
    return total


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["--searched"]:
            searched(sys.argv[2], each="--each" in sys.argv[3:])
        elif sys.argv[1:2] == ["--retrain"]:
            per = int(os.environ.get("EACH_GENOTYPE") or 1)
            plan_retrain(sys.argv[2], sys.argv[3:], per_search=per)
        else:
            plan(sys.argv[1:])
    except Exception as exc:  # noqa: BLE001 - a composition error is the user's: one line
        print(f"nasrun plan: error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        sys.exit(2)
