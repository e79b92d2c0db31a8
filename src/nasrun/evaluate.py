"""``run_eval(cfg, out_dir)``: benchmark query of a genotype for tabular spaces, or retraining from scratch."""

from pathlib import Path

from rich.console import Console
from rich.table import Table

from .benchmarks import benchmark_class, open_benchmark
from .config import build, validate
from .distributed import WORLD, main_only, world_settings
from .errors import UserError
from .files import read_json
from .loggers import build_trackers
from .rundir import RunDir
from .utils import count_flops, count_parameters, resolve_device

HEADS = {"cifar10": (10, 32), "cifar100": (100, 32), "ImageNet16-120": (120, 16)}


def _existing(path, test):
    try:
        return test(path)
    except OSError:  # e.g. a genotype literal longer than a file name may be
        return False


def read_genotype_arg(value):
    """Genotype text from a literal, a ``genotype.json`` file, or a search run directory."""
    text = str(value).strip()
    path = Path(text).expanduser()
    if _existing(path, Path.is_dir):
        path = path / "genotype.json"
        if not path.exists():
            raise UserError(f"{path.parent} has no genotype.json; is it a finished search run?")
    if _existing(path, Path.is_file):
        if path.suffix != ".json":
            return path.read_text().strip()
        fix = "give the genotype.json of a nasrun search, or the genotype itself"
        data = read_json(path, fix)
        if not isinstance(data.get("genotype"), str) or not data["genotype"].strip():
            raise UserError(f"{path} has no genotype (a \"genotype\" text); {fix}")
        return data["genotype"]
    if text.endswith(".json"):
        raise UserError(f"genotype file {path} does not exist")
    if "/" in text and not text.startswith("{") and "|" not in text and "(" not in text:  # a path, not a genotype
        raise UserError(f"genotype={text}: no such run directory or genotype file")
    return text


def preflight(cfg):
    """``(space, mode, genotype)`` of an eval, or a one-line :class:`UserError` (run before Hydra makes the run
    directory, and again by :func:`run_eval`): the mode fits the space, the genotype (text or file) parses."""
    space = build(cfg.space)
    mode = cfg.mode if cfg.mode != "auto" else ("benchmark" if space.benchmark else "retrain")
    if mode not in ("benchmark", "retrain"):
        raise UserError(f"unknown eval mode '{mode}'; choose auto, benchmark or retrain")
    if mode == "benchmark" and space.benchmark is None:
        raise UserError(f"space {space.name} has no tabular benchmark; use mode=retrain")
    if mode == "retrain" and not space.retrainable:
        raise UserError(f"space {space.name} is evaluated by its benchmark ({space.benchmark}), not retrained; "
                        "drop mode=retrain")
    build_trackers(cfg.get("logger"))  # each tracker's package imports
    return space, mode, space.parse_genotype(read_genotype_arg(cfg.genotype))


def run_eval(cfg, out_dir):
    """Evaluate ``cfg.genotype``: NB201 benchmark table (``mode=benchmark``) or retraining (``mode=retrain``)."""
    validate(cfg)
    space, mode, genotype = preflight(cfg)
    trackers = build_trackers(cfg.get("logger"))  # rank 0's only
    if WORLD.active and mode != "retrain":
        raise UserError(f"mode={mode} runs in one process; start it without torchrun / Slurm tasks")
    try:
        with world_settings(cfg.trainer):
            return _run_eval(cfg, out_dir, space, mode, genotype, trackers)
    except BaseException:
        if trackers is not None:
            trackers.close()
        raise


def _run_eval(cfg, out_dir, space, mode, genotype, trackers):
    run = RunDir(out_dir, cfg)
    if mode == "retrain":
        return _retrain(cfg, run, space, genotype, trackers)
    run.start()
    bench = open_benchmark(cfg.benchmark.name, cfg.benchmark.path, space.benchmark)
    rows = {}
    datasets = benchmark_class(space.benchmark).datasets
    for ds in datasets:
        res = bench.query(genotype, ds) if bench is not None else None
        row = {"valid_acc": res and res["valid_acc"], "test_acc": res and res["test_acc"],
               **{f"benchmark_{k}": v for k, v in (res or {}).items() if k not in ("valid_acc", "test_acc")}}
        if space.retrainable:  # the benchmark's own network, measured here
            classes, size = HEADS[ds]
            net = space.build_network(genotype, classes)
            row.update(params_m=count_parameters(net) / 1e6, flops_m=count_flops(net, (1, 3, size, size)) / 1e6)
        rows[ds] = row
    summary = {"genotype": space.format_genotype(genotype), "space": space.name, "mode": mode,
               "benchmark_source": getattr(bench, "source", None), "results": rows}
    run.write("summary.json", summary)
    if trackers is not None:  # one "epoch": the table's numbers per dataset
        trackers.start(run, run.config, 0)
        trackers.log({"epoch": 0, **rows, "genotype": summary["genotype"]})
        trackers.finish([run.path / "summary.json"])
    table = Table(title=f"{space.name}: {summary['genotype']}")
    for col in ("dataset", "valid acc %", "test acc %", "params (M)", "FLOPs (M)" if space.retrainable else "train s"):
        table.add_column(col, justify="right")
    for ds, r in rows.items():
        if space.retrainable:
            table.add_row(ds, _pct(r["valid_acc"]), _pct(r["test_acc"]), f"{r['params_m']:.6f}", f"{r['flops_m']:.5f}")
        else:
            params, seconds = r.get("benchmark_params"), r.get("benchmark_training_time")
            table.add_row(ds, _pct(r["valid_acc"]), _pct(r["test_acc"]), "-" if params is None else f"{params / 1e6:.6f}",
                          _pct(seconds))
    console = Console()
    console.print(table)
    if bench is None:
        console.print(f"no benchmark file found: accuracies need {space.benchmark} (set benchmark.path or "
                      "$NASRUN_BENCH; see `nasrun bench --help`)")
    elif all(r["test_acc"] is None for r in rows.values()):
        console.print(f"this cell is not in {bench.source}")
    return summary


def _retrain(cfg, run, space, genotype, trackers=None):
    from .retrain import run_retrain

    state = run.load_checkpoint()
    if state is not None and state.get("finished"):
        summary = state["summary"]
    else:
        run.start()
        summary = run_retrain(cfg, run, state, space, genotype, resolve_device(cfg.trainer.device), trackers)
    main_only(_print_retrain, summary)
    return summary


def _print_retrain(summary):
    table = Table(title=f"nasrun eval (retrain, {summary['protocol']})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("genotype", "dataset", "epochs", "test_acc", "test_error", "top5_error", "params_m", "flops_m", "train_seconds",
                "run_dir"):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _pct(x):
    return "-" if x is None else f"{x:.2f}"
