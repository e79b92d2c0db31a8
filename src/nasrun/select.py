"""``run_select(cfg, out_dir)``: re-run a selector (or replay a stop rule) on a finished search without re-searching."""

import json
from pathlib import Path


from .benchmarks import open_benchmark
from .config import build, validate
from .data import BENCHMARK_NAMES
from .engine import console, set_rng_state, snapshot_epochs, snapshot_path
from .errors import UserError
from .files import read_checkpoint, read_yaml
from .rundir import RunDir
from .search import build_search, check_combination, choose, derived_params_m, query_all, write_selections
from .stops import replay
from .utils import resolve_device


def run_select(cfg, out_dir):
    """Load ``cfg.run``'s config and final checkpoint, apply ``cfg.selector``, write to a new directory.

    With ``stop=...`` the rule is first replayed over the run's history; if it would have fired, the
    genotype of its epoch is the result (so DARTS+ / DARTS-ES and SS-DARTS come from the same runs, as in [SS]).
    """
    validate(cfg, "select")
    source = Path(str(cfg.run)).expanduser()
    ckpt_path, conf_path = source / "checkpoint.pt", source / "config.yaml"
    if not ckpt_path.exists() or not conf_path.exists():
        raise UserError(f"{source} is not a search run directory (needs config.yaml and checkpoint.pt)")
    fix = "give the run directory of a nasrun search (rerun that search to rewrite it)"
    state = read_checkpoint(ckpt_path, ("supernet", "method", "rng", "history"), fix)
    if not (state.get("finished") or state.get("trained")):
        raise UserError(f"the search in {source} has not finished training; resume it first (rerun its command)")
    snapshot = cfg.get("snapshot")
    if snapshot is not None:  # the state kept after that epoch: its supernet, α and history up to it
        state = read_checkpoint(snapshot_file(source, snapshot), ("supernet", "method", "rng", "history"), fix)
    search_cfg = read_yaml(conf_path, fix)
    search_cfg.trainer.device = cfg.trainer.device
    search_cfg.trainer.progress = False
    device = resolve_device(cfg.trainer.device)
    space, data, stream, _, supernet, method = build_search(search_cfg, device)
    try:
        supernet.load_state_dict(state["supernet"])
        method.load_state_dict(state["method"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # a checkpoint of another network than config.yaml's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{ckpt_path} does not fit the search in {conf_path} ({first}); {fix}") from None
    selector, stop = build(cfg.selector), build(cfg.stop)
    check_combination(space, method, selector, stop, search_cfg.diagnostics)  # before the output directory exists
    run = RunDir(out_dir, cfg)
    run.start()
    set_rng_state(state["rng"])
    bench = open_benchmark(cfg.benchmark.name, cfg.benchmark.path, space.benchmark)
    bench_ds = cfg.benchmark.dataset or BENCHMARK_NAMES.get(data.name, "cifar10")
    history = state["history"]
    stop_epoch = replay(stop, history, search_cfg.trainer.epochs)
    selections = choose(run, space, method, history, selector, stop, stop_epoch, stream=stream, bench=bench,
                        bench_dataset=bench_ds)
    label, genotype = write_selections(run, space, selections, source=str(source))
    text = space.format_genotype(genotype)
    summary = {"genotype": text, "space": space.name, "selector": label, "source": str(source), "stop_epoch": stop_epoch,
               "snapshot": snapshot,
               **space.genotype_stats(genotype), "params_m": derived_params_m(space, genotype, data.num_classes,
                                                                               data.train_x.shape[1]),
               "benchmark": query_all(bench, genotype), "run_dir": str(run.path)}
    run.write("summary.json", summary)
    console.print(f"select: {label} on {source} → {text}")
    print(json.dumps({"genotype": text, "run_dir": str(run.path)}))
    return summary


def snapshot_file(source, epoch):
    """``snapshots/epoch_<E>.pt`` of a search run that kept it (``trainer.keep_snapshots``), else a one-line error
    naming the epochs it kept."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UserError(f"snapshot={epoch!r}: give the epoch (0-based) of a kept snapshot")
    path = snapshot_path(source, epoch)
    if not path.is_file():
        kept = snapshot_epochs(source)
        raise UserError(f"{source} kept no snapshot of epoch {epoch}; "
                        + (f"it kept epochs {kept}" if kept else "search with trainer.keep_snapshots=N to keep some"))
    return path
