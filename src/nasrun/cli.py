"""Command line: ``nasrun search|eval|select [hydra overrides]``, ``nasrun bench convert|info``, ``nasrun report``.

``main`` dispatches on the first argument; ``search`` and ``eval`` are Hydra apps whose task
functions are three-line wrappers around :func:`nasrun.search.run_search` / :func:`nasrun.evaluate.run_eval`.
"""

import argparse
import os
import re
import shlex
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from .console import is_main
from .errors import Interrupted, UserError, exit_code, write_error

from .config import CONF_DIR, GROUPS
USAGE = """usage: nasrun COMMAND [overrides]

commands:
  search   train a supernet, derive the genotype, query the benchmark   (nasrun search --help)
  eval     query the benchmark for a genotype, or retrain it            (nasrun eval genotype=...)
  select   re-run a selector on a finished search                      (nasrun select run=DIR selector=pt)
  bench    convert | info: compact benchmark tables                     (nasrun bench --help)
  report   tables (mean ± std over seeds) and plots from run directories  (nasrun report multirun/...)
  rerun    run one job of a sweep again in its folder, resuming it       (nasrun rerun multirun/.../3)

examples:
  nasrun search +experiment=demo
  nasrun search method=darts_2nd space=nb201 dataset=cifar10
  nasrun search -m seed=0,1,2 method=darts,darts_2nd
  nasrun eval genotype='|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'
"""


def fail(message, code=2):
    """Print a one-line error and exit (no traceback for user errors); of several processes, rank 0 prints it."""
    if is_main():
        print(f"nasrun: error: {message}", file=sys.stderr)
    sys.exit(code)


def _guard(fn, cfg):
    hc = HydraConfig.get()
    if "SLURM_STEP_NUM_TASKS" in os.environ:  # a job of several Slurm tasks (hydra.launcher.tasks_per_node / nodes)
        join_tasks()
    if hc.mode == RunMode.MULTIRUN:  # one job of a sweep: a failure is recorded, never raised (nasrun.sweep)
        from .sweep import guarded_job

        return guarded_job(fn, cfg, hc.runtime.output_dir, hc.job.num)
    from .console import console
    from .sweep import note_rerun

    out = hc.runtime.output_dir
    try:
        summary = fn(cfg, out)
    except UserError as exc:
        note_rerun(out, "failed", str(exc))
        fail(str(exc))
    except Interrupted as exc:
        note_rerun(out, "interrupted", str(exc))
        if is_main():
            print(f"nasrun: {exc}; resume with: nasrun rerun {shlex.quote(str(out))}", file=sys.stderr)
        sys.exit(exit_code(exc.signal))
    except KeyboardInterrupt:  # Ctrl-C outside the epoch loop (building, selecting): nothing half-written
        note_rerun(out, "interrupted", "Ctrl-C")
        print(f"\nnasrun: interrupted (Ctrl-C); the last checkpoint is intact; resume with: nasrun rerun "
              f"{shlex.quote(str(out))}", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        message = write_error(exc)
        if message is None:
            raise
        fail(message)
    else:
        note_rerun(out, "finished", summary=summary)
        return summary
    finally:
        console.log_path = None  # later lines are not the run's


@hydra.main(config_path=str(CONF_DIR), config_name="search", version_base="1.3")
def search_app(cfg):
    from .search import run_search

    return _guard(run_search, cfg)


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def eval_app(cfg):
    from .evaluate import run_eval

    return _guard(run_eval, cfg)


PATH_KEYS = ("hydra.run.dir", "hydra.sweep.dir", "hydra.launcher.submitit_folder", "benchmark.path", "dataset.root",
             "run", "space.edge_ops_file")
_UNQUOTED = re.compile(r"[A-Za-z0-9_./,-]+")  # plainly safe for Hydra's override grammar without quotes


def hydra_quote(value):
    """``value`` as a quoted Hydra override value: a quote is escaped, and so are the backslashes just before a quote
    or the end (Hydra's grammar reads a backslash elsewhere as itself)."""
    return "'" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"


def quote_args(args):
    """Make pasted values safe for Hydra's override parser: genotype strings (``|``, ``~`` and the brackets of a DARTS
    ``Genotype(...)``) and paths (spaces, non-ASCII letters) are quoted, and ``~`` and ``$VARS`` in path keys are
    expanded (a shell leaves ``key=~/x`` alone where it is not an assignment). Comma lists stay sweeps."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        name = key.lstrip("+~")
        if not sep or not value or value[0] in "'\"" or name not in (*PATH_KEYS, "genotype"):
            out.append(arg)
            continue
        if name in PATH_KEYS or (value.startswith(("~", "$")) and "|" not in value):
            value = os.path.expandvars(os.path.expanduser(value))
        if not _UNQUOTED.fullmatch(value):
            value = hydra_quote(value)
        out.append(f"{key}={value}")
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="select", version_base="1.3")
def select_app(cfg):
    from .select import run_select

    return _guard(run_select, cfg)


def check_overrides(config_name, args):
    """Validate overrides before Hydra runs, so mistakes give one line and exit code 2.

    Group choices are checked against the YAML files (every value of a comma sweep); without
    ``-m`` the whole config is composed once to catch unknown keys and malformed values.
    """
    multirun = any(a in ("-m", "--multirun") for a in args)
    modes = [a for a in args if a in ("-m", "--multirun", "-c", "--cfg", "-i", "--info", "--run")]
    if multirun and len(modes) > 1:
        fail(f"{' and '.join(modes)} cannot be combined: -m runs a sweep, --cfg/--info only print the config "
             "(drop one)")
    plain = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        if group in GROUPS:
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            for v in value.split(",") if multirun else [value]:
                if v not in options:
                    fail(f"unknown {group} '{v}'; choose one of: {', '.join(options)}")
        if not key.lstrip("+~").startswith("hydra"):
            plain.append(arg)
    target = None
    if not any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion", "-sc")
               for a in args):  # these only print: no output directory
        target = check_output_dir(config_name, args, multirun)
    if multirun and target is not None:
        from .rundir import check_sweep_target

        try:
            check_sweep_target(target, config_name, plain)
        except UserError as exc:
            fail(str(exc))
    if multirun or any(a.startswith("-") for a in args):
        return
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .config import unknown_added_keys, validate

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=plain)
            added = [a for a in plain if a.startswith("+") and not a.startswith("++")
                     and a.lstrip("+").split("=", 1)[0] not in GROUPS]
            # the config without the added keys, to tell keys that exist from new ones (only when there are any)
            base = compose(config_name=config_name, overrides=[a for a in plain if a not in added]) if added else cfg
    except Exception as exc:  # noqa: BLE001 - every composition error is a user error here
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ else ""
        hint = ""
        if config_name == "eval" and "'trainer." in lines[0] and "not in struct" in " ".join(lines + [cause]):
            hint = "(nasrun eval's schedule lives under retrain.*, e.g. retrain.epochs; trainer.* is hardware only)"
        fail(" ".join(lines[:1] + ([cause] if cause and cause not in lines[0] else []) + ([hint] if hint else [])))
    for key, close in unknown_added_keys(base, added):
        fail(f"unknown key {key} (added with +); " + (f"did you mean {', '.join(close[:3])}?" if close else
                                                      "this config has no such section"))
    if config_name == "select" and OmegaConf.is_missing(cfg, "run"):
        fail("nasrun select needs run=DIR: the run directory of a finished search")
    if config_name == "eval" and cfg.get("genotype") in (None, "???"):
        fail("nasrun eval needs genotype=...: a genotype string, a published name (DARTS_V2), a genotype.json "
             "or a search run directory")
    try:
        validate(cfg)
        if config_name in ("search", "eval"):
            from .evaluate import preflight as eval_preflight
            from .search import preflight

            (preflight if config_name == "search" else eval_preflight)(cfg)
        if target is not None and is_main():  # ranks 1…: rank 0 checks (and then holds) the run directory
            from .rundir import check_run_target

            check_run_target(target, config_name, OmegaConf.to_container(cfg, resolve=True))
    except UserError as exc:
        fail(str(exc))


def check_output_dir(config_name, args, multirun):
    """Refuse in one line an output place that cannot be written (read-only, no permission) before Hydra tries to
    create the run or sweep directory there (it would end in a traceback); returns that place (None if unknown)."""
    import tempfile

    from hydra import compose, initialize_config_dir

    # only what can move the directory: hydra.* and the (first) preset, which may set it
    wanted = [a if "," not in a else a.split(",")[0] for a in args if "=" in a and not a.startswith("-")
              and a.lstrip("+~").split("=", 1)[0] in ("experiment", "hydra.run.dir", "hydra.sweep.dir")]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            hc = compose(config_name=config_name, overrides=wanted, return_hydra_config=True).hydra
    except Exception:  # noqa: BLE001 - composition errors are reported by the full check
        return None
    target = Path(hc.sweep.dir if multirun else hc.run.dir).expanduser().absolute()
    existing = next(p for p in [target, *target.parents] if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        tempfile.TemporaryFile(dir=existing).close()  # can a file be created there?
    except OSError as exc:
        key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
        fail(f"cannot write the output directory {target} ({exc.strerror or exc} at {existing}); choose a writable "
             f"place with {key}=...")
    return target


def bench_main(argv):
    """``nasrun bench convert SRC [-o DST]`` and ``nasrun bench info FILE``."""
    parser = argparse.ArgumentParser(prog="nasrun bench", description="Benchmark tables for fast queries.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="write the compact table of an original benchmark file "
                                          "(NAS-Bench-201 .pth or NAS-Bench-101 nasbench_only108.tfrecord)")
    conv.add_argument("src")
    conv.add_argument("-o", "--out", help="output file (default: SRC with suffix .json)")
    info = sub.add_parser("info", help="print what a benchmark file holds")
    info.add_argument("file")
    args = parser.parse_args(argv)
    from .benchmarks import load_any

    try:
        if args.cmd == "convert":
            print(f"reading {args.src} (NAS-Bench-101: a few minutes) ...", file=sys.stderr)
            bench = load_any(args.src)
            out = Path(args.out or Path(args.src).with_suffix(".json"))
            bench.save(out)
            print(f"wrote {out} ({bench.name}, {len(bench)} architectures, {out.stat().st_size / 1e6:.1f} MB)")
        else:
            bench = load_any(args.file)
            print(f"{args.file}: {bench.name} table with {len(bench)} architectures (source {bench.source})")
    except UserError as exc:
        fail(str(exc))


def report_main(argv):
    """``nasrun report DIR... [-o OUT] [--protocol mean|best-of-n] [--select-by COL] [--pool KEY]... [--no-plots]
    [--paper FILE]``."""
    parser = argparse.ArgumentParser(prog="nasrun report", description="Group runs by the config keys that differ "
                                     "(except the seed) and print mean ± std (n); writes report.csv, report.md, plots/.")
    parser.add_argument("dirs", nargs="+", help="run directories or folders holding them (multirun/..., outputs/...)")
    parser.add_argument("-o", "--out", help="where to write the tables and plots (default: the first DIR)")
    parser.add_argument("--protocol", default="mean", choices=("mean", "best-of-n"),
                        help="mean ± std over the runs of a group, or the run with the best validation accuracy")
    parser.add_argument("--select-by", metavar="COLUMN",
                        help="the column best-of-n ranks by (default: the first benchmark valid, else 'supernet valid'; "
                             "SP-DARTS: 'supernet monitor')")
    parser.add_argument("--pool", metavar="KEY", action="append", default=[],
                        help="a config key that does not split groups, like the seed (repeatable; e.g. method.t_sp)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--paper", metavar="FILE",
                        help="a paper's table as data (scripts/tables/ref/*.yaml): print the paper's numbers beside ours, "
                             "the difference and whether ours lies in the paper's band (also report_paper.csv, report.md)")
    args = parser.parse_args(argv)
    import warnings

    from .report import compare_paper, print_paper, print_report, run_report

    warnings.formatwarning = lambda message, *_a, **_k: f"nasrun: warning: {message}\n"  # one line, no source line

    try:
        print_report(*run_report(args.dirs, args.out, args.protocol, plots=not args.no_plots, pool=args.pool,
                                 select_by=args.select_by))
        if args.paper:
            print_paper(*compare_paper(args.dirs, args.paper, args.out))
    except UserError as exc:
        fail(str(exc))


def force_sweep_keys(config_name, args):
    """A sweep's plain override of a key that only the swept presets have (``selector.proj_intv=1`` beside
    ``+experiment=darts_pt_nb201,...``) fails in Hydra's first compose, which leaves the sweeps out; such an override
    becomes ``++key=value`` (set, or add) when every job's config has the key, and is refused in one line otherwise.
    Returns the arguments to hand to Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from .plan import jobs

    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    parsed = dict(zip(overrides, OverridesParser.create().parse_overrides(overrides)))
    plain = [a for a, o in parsed.items() if not o.is_sweep_override() and a[0] not in "+~" and "." in o.key_or_group
             and not o.key_or_group.startswith("hydra") and o.package is None]
    if not plain:
        return args
    missing = object()
    fixed = [a for a in overrides if a not in plain and not parsed[a].is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose(config_name=config_name, overrides=[a for a in fixed if not a.lstrip("+~").startswith("hydra")])
        absent = [a for a in plain if OmegaConf.select(base, parsed[a].key_or_group, default=missing) is missing]
        if not absent:
            return args
        keep = [a for a in overrides if not a.lstrip("+~").startswith("hydra") and a not in absent]
        for job in jobs(keep):
            cfg = compose(config_name=config_name, overrides=job)
            for a in absent:
                if OmegaConf.select(cfg, parsed[a].key_or_group, default=missing) is missing:
                    chosen = " ".join(o for o in job if o not in overrides)
                    fail(f"{a}: the sweep's job {chosen} has no key {parsed[a].key_or_group}; sweep only over choices "
                         "that have it")
    return [f"++{a}" if a in absent else a for a in args]


def rerun_argv(run_dir, extra=()):
    """``(task, argv)`` that run a job of a sweep (or any run) again in its own directory, resuming it:
    its recorded overrides (``.hydra/overrides.yaml``), then ``extra``, then ``hydra.run.dir``."""
    from omegaconf import OmegaConf

    run = Path(run_dir)
    files = run / ".hydra" / "overrides.yaml", run / ".hydra" / "hydra.yaml"
    if not all(f.exists() for f in files):
        fail(f"{run} is not a run directory of nasrun (no .hydra/overrides.yaml); give a job folder of a sweep")
    from .files import read_yaml

    try:
        task = OmegaConf.select(read_yaml(files[1], "it cannot be rerun"), "hydra.job.name")
        overrides = [str(o) for o in read_yaml(files[0], "it cannot be rerun", kind="list")]
    except UserError as exc:
        fail(str(exc))
    if task not in ("search", "eval", "select"):
        fail(f"{files[1]} names no nasrun command (hydra.job.name: {task}); it cannot be rerun")
    return task, [*overrides, *extra, f"hydra.run.dir={hydra_quote(str(run.resolve()))}"]


def join_tasks():
    """In a Slurm job of several tasks (submitit runs this job in each): join the process group; ranks 1… go quiet."""
    from .distributed import WORLD, env_world, start

    if env_world() is not None and not WORLD.active:
        start()
        if not WORLD.main:
            from .console import console

            console.quiet = True


def join_world(config_name, args, multirun):
    """Started as one of several processes (torchrun, Slurm tasks): join the process group, quiet every rank but 0,
    and give all ranks rank 0's run directory (the default one is named by the time each process reads). Returns the
    overrides to run with."""
    if "WORLD_SIZE" not in os.environ and "SLURM_STEP_NUM_TASKS" not in os.environ:
        return args  # one process (and no torch import yet)
    from .distributed import WORLD, broadcast, env_world

    if env_world() is None:
        return args
    if config_name == "select":
        fail("nasrun select runs in one process; start it without torchrun / Slurm tasks")
    if multirun:
        fail("a sweep (-m) cannot run under torchrun; sweep with hydra/launcher=slurm (tasks_per_node for several "
             "processes per job) or run each setting as its own torchrun")
    join_tasks()
    if not WORLD.main:
        args = [*args, "hydra.output_subdir=null"]  # rank 0 writes .hydra/
    if not any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in args):
        stamp = broadcast(time.strftime("%Y-%m-%d_%H-%M-%S"))
        args = [*args, f"hydra.run.dir=outputs/{config_name}/{stamp}"]
    return args


def main():
    """Entry point of the ``nasrun`` console script."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        return
    cmd = sys.argv[1]
    if cmd == "bench":
        return bench_main(sys.argv[2:])
    if cmd == "report":
        return report_main(sys.argv[2:])
    apps = {"search": (search_app, "search"), "eval": (eval_app, "eval"), "select": (select_app, "select")}
    if cmd == "rerun":  # one job of a sweep again, in place: nasrun rerun SWEEP/3 [overrides]
        if len(sys.argv) < 3 or sys.argv[2].startswith("-"):
            fail("usage: nasrun rerun RUN_DIR [overrides]  (a job folder of a sweep, e.g. multirun/x/3)")
        cmd, args = rerun_argv(sys.argv[2], sys.argv[3:])
        sys.argv[1:] = [cmd, *args]
    if cmd not in apps:
        fail(f"unknown command '{cmd}'; choose one of: search, eval, select, rerun, bench, report")
    sys.argv.pop(1)
    sys.argv[1:] = quote_args(sys.argv[1:])
    app, config_name = apps[cmd]
    multirun = any(a in ("-m", "--multirun") for a in sys.argv[1:])
    sys.argv[1:] = join_world(config_name, sys.argv[1:], multirun)
    check_overrides(config_name, sys.argv[1:])
    if multirun:
        sys.argv[1:] = force_sweep_keys(config_name, sys.argv[1:])
    from .sweep import FAILED, SweepStopped, stopped_sweep

    try:
        app()
    except SweepStopped as stop:  # the basic launcher's job was interrupted: no new job started
        stopped_sweep(stop.signal, stop.sweep_dir, sys.argv[1:], cmd)
    stopped_sweep(None, None, sys.argv[1:], cmd)  # a joblib sweep stopped: its table is printed, say how to resume
    if FAILED:  # a sweep ran to its end but some jobs did not finish (its table says which)
        sys.exit(1)


if __name__ == "__main__":
    main()
