"""``DRY=1 scripts/tables/X.sh``: what a table script would run, job by job, and its GPU-hours before running it.

``python -m nasrun.plan nasrun search -m OVERRIDES...`` expands the sweep as Hydra's basic sweeper does (every
comma list, range or choice sweep crossed with the others), composes each job's config, and prints one line per
job: its overrides, epochs and estimated hours, from a per-epoch time (``EPOCH_S`` seconds if set, else the
figure measured for the space family, see :data:`EPOCH_SECONDS`). Any other command is printed as it would run.
The hours are appended to the file ``$PLAN_TOTAL`` when set, so a script can print its total at the end.
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
            print(f"  {' '.join(job)}: {epochs} epochs × {seconds:.0f} s ≈ {hours:.1f} GPU-h{note}", file=out)
    print(f"  ≈ {total:.1f} GPU-hours", file=out)
    if os.environ.get("PLAN_TOTAL"):
        with open(os.environ["PLAN_TOTAL"], "a") as f:
            f.write(f"{total}\n")
    return total


if __name__ == "__main__":
    try:
        plan(sys.argv[1:])
    except Exception as exc:  # noqa: BLE001 - a composition error is the user's: one line
        print(f"nasrun plan: error: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
        sys.exit(2)
