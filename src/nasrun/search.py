"""``run_search(cfg, out_dir)``: train a supernet, derive the genotype, query the benchmark.

The loop reads top to bottom: build everything, resume if a checkpoint exists, then per epoch run the
method's steps, log one metrics line, write a checkpoint; finally select and summarise.
"""

import contextlib
import functools
import resource

import torch
from rich.console import Console
from rich.table import Table

from .benchmarks import open_benchmark
from .config import build, validate
from .data import BENCHMARK_NAMES, build_search_stream, check_cutout, load_dataset
from .distributed import WORLD, check_world, convert_sync_bn, main_only, shared, world_settings
from .diagnostics import discretised_accuracy, hessian_eigenvalue, ies_entropy, operation_magnitudes, tse_estimators
from .engine import EpochLoop, console, seed_everything
from .errors import UserError
from .graphs import graphs_wanted
from .loggers import build_trackers
from .rundir import RunDir
from .spaces.fused import compile_cells, set_fused
from .utils import count_parameters, resolve_device

def build_data(cfg, space, device):
    """Dataset config → (data, search stream, protocol)."""
    d = dict(cfg.dataset)
    name, root, download, synthetic = d.pop("name"), d.pop("root"), d.pop("download"), d.pop("synthetic", None)
    data = load_dataset(name, root, download, synthetic)
    check_cutout("dataset.cutout", d.get("cutout", 0), data.train_x.shape[-1])
    try:
        stream, protocol = build_search_stream(data, space_split=space.default_split, batch_size=cfg.trainer.batch_size,
                                               seed=cfg.seed, device=device, **d)
    except TypeError as exc:
        raise UserError(f"bad dataset config: {exc}") from None
    return data, stream, protocol


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def query_all(bench, genotype):
    """Benchmark results of a genotype on every dataset the benchmark has."""
    if bench is None:
        return None
    return {ds: bench.query(genotype, ds) for ds in bench.datasets}


def build_search(cfg, device):
    """Space, data, stream, supernet and method of a search config (also used by ``nasrun select``)."""
    t = cfg.trainer
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    space = build(cfg.space)
    data, stream, protocol = build_data(cfg, space, device)
    supernet = space.build_supernet(data.num_classes, in_channels=data.train_x.shape[1]).to(device)
    if t.get("sync_bn"):
        convert_sync_bn(supernet)
    set_fused(supernet, t.get("fused", True))
    if t.get("compile", False):
        compile_cells(supernet)
    if t.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    method = build(cfg.method, supernet=supernet, space=space)
    if getattr(method, "merge_train_val", False):  # TSE-DARTS: one dataset of both halves
        stream.merge_train_val()
    elif getattr(method, "single_level", False):  # GAEA ERM: both batches from the training images
        stream.single_level()
    if t.amp and device.type == "cuda":
        method.autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    method.use_cuda_graphs(graphs_wanted(t.get("cuda_graphs", "auto"), device, distributed=WORLD.active),
                           verify=t.get("cuda_graphs_verify", True))
    return space, data, stream, protocol, supernet, method


def check_combination(space, method, selector, stop, diagnostics):
    """Refuse, before any training, a selector or stop rule that cannot work with this space, method and
    diagnostics (each part's ``check_setup``), so no search trains for nothing (issue 15)."""
    if getattr(selector, "needs_tensor_weights", False) and not getattr(method, "tensor_weights", True):
        raise UserError(f"selector={selector.name} edits the supernet's mixing weights, but method={method.name} runs "
                        "sampled single paths; use selector=argmax (or random_ranking)")
    for part in (selector, stop):
        if hasattr(part, "check_setup"):
            part.check_setup(space=space, method=method, diagnostics=diagnostics,
                             record_keys=lambda: record_keys(space, method, diagnostics))


def preflight(cfg):
    """Build a search config's space, method (on a CPU supernet), selector and stop rule and check that they work
    together, so a refusal comes before any data is loaded or a run directory exists."""
    if cfg.dataset.name == "imagenet":
        raise UserError("dataset=imagenet is for retraining (nasrun eval mode=retrain retrain=imagenet); a search on "
                        "ImageNet (PC-DARTS's and DrNAS's subsampled search) is not yet supported")
    space = build(cfg.space)
    method = build(cfg.method, supernet=space.build_supernet(10), space=space)
    if hasattr(method, "check_epochs"):
        method.check_epochs(cfg.trainer.epochs)
    check_combination(space, method, build(cfg.selector), build(cfg.stop), cfg.diagnostics)
    build_trackers(cfg.get("logger"))  # each tracker's package imports


def record_keys(space, method, diagnostics):
    """The numbers every epoch's metrics record will carry (what a selector may rank epochs by)."""
    keys = {"train_loss", "train_acc", "valid_loss", "valid_acc", "seconds", "images_per_s", "ies_entropy",
            *method.lrs(), *method.epoch_metrics(), *tse_estimators([1.0]),
            *space.genotype_stats(space.derive(method.derive_weights()))}
    if diagnostics.get("hessian_every"):
        keys.add("hessian_eigenvalue")
    if diagnostics.get("discrete_acc"):
        keys.add("discrete_valid_acc")
    return keys


def kept_snapshots(every):
    """``trainer.keep_snapshots=N``: the epochs (0-based) whose full state stays in ``snapshots/`` after the run, every
    N-th (epochs N-1, 2N-1, ...), for ``nasrun select snapshot=E`` ([PT] Fig. 4: a selector applied to the supernet of
    each epoch); None when N is 0."""
    return None if not every else (lambda epoch: (epoch + 1) % int(every) == 0)


def epoch_start(supernet, method, epoch, epochs):
    """Per-epoch schedules: the supernet's (search drop-path) and the method's (learning rates, temperatures)."""
    if hasattr(supernet, "on_epoch_start"):
        supernet.on_epoch_start(epoch, epochs)
    method.on_epoch_start(epoch, epochs)


def run_search(cfg, out_dir):
    """Run (or resume) one search in ``out_dir`` and return its summary dict."""
    validate(cfg)
    preflight(cfg)
    trackers = build_trackers(cfg.get("logger"))  # a tracker whose package is missing is refused here; rank 0's only
    try:
        with world_settings(cfg.trainer):
            return _run_search(cfg, out_dir, trackers)
    except BaseException:
        if trackers is not None:
            trackers.close()  # the tracker run stays open for the resume
        raise


def _run_search(cfg, out_dir, trackers):
    run = RunDir(out_dir, cfg)
    state = run.load_checkpoint()
    if state is not None and state.get("finished"):
        console.print(f"[green]run already complete[/green]: {run.path}")
        print_summary(state["summary"])
        return state["summary"]
    run.start()
    t = cfg.trainer
    device = resolve_device(t.device)
    space, data, stream, protocol, supernet, method = build_search(cfg, device)
    check_world(method, "method", f"method={method.name}")
    selector = build(cfg.selector)
    stop = build(cfg.stop)
    if getattr(selector, "reads_alpha", False) and not getattr(method, "learns_alpha", True):
        console.print(f"[yellow]warning: method={method.name} never trains α, so selector={selector.name} reads its "
                      "initial values; selector=pt (DARTS-PT) or random_ranking select on the trained supernet[/yellow]")
    diag = cfg.diagnostics
    bench = open_benchmark(cfg.benchmark.name, cfg.benchmark.path, space.benchmark)
    bench_ds = cfg.benchmark.dataset or BENCHMARK_NAMES.get(data.name, "cifar10")

    layout = torch.channels_last if t.channels_last else torch.contiguous_format
    loop = EpochLoop(run, {"supernet": supernet, "method": method}, stream, device, t.progress, layout)
    if state is not None:
        loop.resume(state)
        loop.selection = state.get("selection")  # a selector's progress (DARTS-PT), resumed where it stopped
    if trackers is not None:  # in the selection phase every metrics line is committed, and the phase's records too
        committed = None if state is not None and state.get("trained") else loop.epoch
        trackers.start(run, run.config, committed, ops={k: space.op_names(k)[0] for k in method.alphas})
        loop.trackers = trackers
    console.print(f"search: space={space.name} method={method.name} dataset={data.name} ({protocol} split, "
                  f"{stream.steps} steps/epoch) device={device} → {run.path}")

    def hessian(epoch):
        every, valid = diag.hessian_every, loop.last_batch and loop.last_batch[1]
        if not every or valid is None or not (epoch % every == 0 or epoch == t.epochs - 1):  # RobustDARTS epochs
            return None
        return hessian_eigenvalue(method, valid, diag.hessian_mode, chunk=diag.get("hessian_chunk", 32))

    def discrete_acc():
        if not diag.discrete_acc or stream.valid_idx is None:
            return None
        return discretised_accuracy(method, stream.valid_batches(max_batches=diag.get("discrete_batches", 8)))

    def epoch_end(epoch, m, seconds):
        genotype = space.derive(method.derive_weights())
        return {"epoch": epoch, **method.lrs(), **{k: v for k, v in m.items() if k != "train_n"},
                "seconds": round(seconds, 3), "images_per_s": round(m["train_n"] / seconds, 1) if seconds else None,
                "alpha": {k: [[round(x, 5) for x in row] for row in v.tolist()] for k, v in method.derive_weights().items()},
                "alpha_raw": {k: a.detach().tolist() for k, a in method.alphas.items()},
                "genotype": space.format_genotype(genotype), **space.genotype_stats(genotype),
                "ies_entropy": ies_entropy(method.derive_weights()),
                "op_magnitude": operation_magnitudes(method.derive_weights(), space.op_names("normal")),
                "hessian_eigenvalue": hessian(epoch),
                "discrete_valid_acc": discrete_acc(),
                **tse_estimators([r["train_loss"] for r in loop.history] + [m["train_loss"]]),
                **method.epoch_metrics(), **method.graphs.take_seconds(),
                "benchmark": _with_dataset(bench.query(genotype, bench_ds) if bench is not None else None, bench_ds)}

    def stop_fn(history):
        epoch = stop.check(history, t.epochs)
        if epoch is None or not getattr(stop, "adapt_weight_decay", False):
            return epoch
        if not stop.can_raise(method.weight_decay):
            return None  # DARTS-ADA at its maximum weight decay: train to the end
        event = {"fired_after_epoch": history[-1]["epoch"], "rollback_to": epoch,
                 "genotype": history[epoch]["genotype"]}
        raised = method.weight_decay * stop.mul_factor
        loop.rollback(epoch)  # restores the optimiser with its old weight decay ...
        method.weight_decay = raised  # ... so the raise is applied after it
        loop.events.append({**event, "weight_decay": method.weight_decay})
        loop.checkpoint()
        write_ada(run, space, loop.events)
        console.print(f"DARTS-ADA: rolled back to the end of epoch {epoch + 1}, weight decay now {method.weight_decay:g}")
        return None

    group = getattr(method, "group_size", 1)
    kept = kept_snapshots(t.get("keep_snapshots", 0))
    stop_snapshot = getattr(stop, "snapshot_epoch", None)
    snapshot_fn = None if kept is None and stop_snapshot is None else \
        (lambda e: (kept is not None and kept(e)) or (stop_snapshot is not None and stop_snapshot(e)))
    loop.fit(t.epochs, method.step_group if group > 1 else method.step, lambda e: epoch_start(supernet, method, e, t.epochs),
             epoch_end, log_epoch, group=group, stop_fn=stop_fn, snapshot_fn=snapshot_fn)
    elapsed, history = loop.elapsed, loop.history
    write_ada(run, space, loop.events)
    loop.checkpoint(trained=True)
    loop.freeze()  # checkpoints from here on keep the trained supernet, whatever the selector does to it

    try:  # several processes: rank 0 selects alone (its supernet is every rank's) and sends the genotypes to all
        selections = shared(choose, run, space, method, history, selector, stop, loop.stop_epoch, stream=stream,
                            bench=bench, bench_dataset=bench_ds, progress=SelectionProgress(loop))
    except UserError as e:
        raise UserError(f"{e} (training finished and is kept in {run.path}: select from it with `nasrun select "
                        f"run={run.path} selector=...`)") from None
    chosen_epoch = len(history) - 1 if loop.stop_epoch is None else loop.stop_epoch
    label, genotype = write_selections(run, space, selections, epoch=chosen_epoch)
    text = space.format_genotype(genotype)
    summary = {"genotype": text, "space": space.name, "method": method.name, "selector": label,
               "dataset": data.name, "seed": cfg.seed, "epochs": t.epochs, "epochs_run": len(history),
               "stop_epoch": loop.stop_epoch, "ada": loop.events or None, **space.genotype_stats(genotype),
               "params_m": derived_params_m(space, genotype, data.num_classes, data.train_x.shape[1]),
               "benchmark": query_all(bench, genotype), "benchmark_source": getattr(bench, "source", None),
               "search_seconds": round(elapsed, 2), "overhead_seconds": round(loop.overhead, 2),
               "peak_memory_mb": round(peak_memory_mb(device), 1),
               "run_dir": str(run.path)}
    run.write("summary.json", summary)
    loop.checkpoint(finished=True, summary=summary)
    loop.drop_snapshots(keep=kept)
    if trackers is not None:
        trackers.finish(run_artefacts(run))
    main_only(print_summary, summary)
    return summary


def run_artefacts(run):
    """The files a finished run hands to its trackers: genotype.json, summary.json (and the other genotypes) and
    the run's report plot (``plots/curves.png``, drawn here)."""
    from .report import load_run, plot_group

    plot = run.path / "plots" / "curves.png"
    plot.parent.mkdir(exist_ok=True)
    plot_group(run.path.name, [load_run(run.path)], plot)
    return [run.path / "genotype.json", run.path / "summary.json", *sorted((run.path / "genotypes").glob("*.json")),
            plot]


def derived_params_m(space, genotype, num_classes, in_channels=3):
    """Parameters (millions, auxiliary head excluded) of the genotype's evaluation network at the space's own
    protocol sizes (NB201: the benchmark's network; DARTS family: ``eval_C`` / ``eval_layers``), or None where the
    space is evaluated only by a benchmark query (NAS-Bench-1Shot1)."""
    try:
        net = space.build_network(genotype, num_classes, in_channels=in_channels)
    except UserError:
        return None
    return round(count_parameters(net) / 1e6, 6)


class SelectionProgress:
    """How a long selector (DARTS-PT) checkpoints its progress beside the trained state and finds it again.

    ``saved`` is the state the selector last saved (None on a fresh start); :meth:`save` writes a new one into
    checkpoint.pt, next to the trained supernet; ``where`` names the run directory for messages."""

    def __init__(self, loop):
        self.loop, self.saved, self.where = loop, loop.selection, loop.run.path

    def save(self, state):
        self.loop.selection = state
        self.loop.checkpoint(trained=True)

    def report(self, record):
        """Send a selection phase's record (``epoch`` counting on after the search's epochs) to the trackers."""
        if self.loop.trackers is not None:
            self.loop.trackers.log(record)


def _with_dataset(result, dataset):
    """A per-epoch benchmark result with the dataset it was queried on (plots name it)."""
    return {**result, "dataset": dataset} if result else result


def choose(run, space, method, history, selector, stop, stop_epoch, **kwargs):
    """``[(label, genotype), ...]``: the stop rule's epoch if it fired, else the selector's choice
    (its decisions, if any, go to selection.json). A rule without rollback (``all_skip``) only ends the
    history: a selector that reads nothing but the history picks from the epochs up to it."""
    if stop_epoch is not None:
        if getattr(stop, "rollback", True) or not getattr(selector, "history_only", False):
            return [(stop.name, space.parse_genotype(history[stop_epoch]["genotype"]))]
        history = history[:stop_epoch + 1]
    selections = selector.select(space=space, method=method, history=history, **kwargs)
    if getattr(selector, "decisions", None):
        run.write("selection.json", {"selector": selector.name, "decisions": selector.decisions})
    return selections


def write_ada(run, space, events):
    """DARTS-ADA's rollbacks to ada.json; the first one's genotype is DARTS-ES's, kept in genotypes/darts_es.json."""
    if events:
        run.write("ada.json", events)
        run.write("genotypes/darts_es.json", {"space": space.name, "selector": "darts_es",
                                              "epoch": events[0]["rollback_to"], "genotype": events[0]["genotype"]})


def write_selections(run, space, selections, **extra):
    """genotype.json from the first ``(label, genotype)``; with several, each also to ``genotypes/``.

    Returns the first pair."""
    for i, (label, genotype) in enumerate(selections):
        record = {"space": space.name, "selector": label, **extra, "genotype": space.format_genotype(genotype)}
        if i == 0:
            run.write("genotype.json", record)
        if len(selections) > 1:
            run.write(f"genotypes/{label.replace('@', '_epoch')}.json", record)
    return selections[0]


def _fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def log_epoch(r, epochs):
    bench = r["benchmark"]
    extra = f"  bench test {bench['test_acc']:.2f}%" if bench else ""
    console.print(f"epoch {r['epoch'] + 1}/{epochs}  train {_fmt(r['train_loss'])} / {_fmt(r['train_acc'], '.2f')}%  "
                  f"valid {_fmt(r['valid_loss'])} / {_fmt(r['valid_acc'], '.2f')}%  {r['seconds']:.1f}s  "
                  f"{r['images_per_s']:.0f} img/s  skip {r['skip_count']}{extra}\n  {r['genotype']}")


def print_summary(summary):
    table = Table(title="nasrun search", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in ("genotype", "space", "method", "dataset", "seed", "epochs", "skip_count", "depth",
                "search_seconds", "overhead_seconds", "peak_memory_mb", "run_dir"):
        table.add_row(key, str(summary.get(key)))
    for ds, res in (summary.get("benchmark") or {}).items():
        table.add_row(f"{ds} valid / test", "not in table" if res is None else
                      f"{res['valid_acc']:.2f}% / {res['test_acc']:.2f}%")
    with contextlib.suppress(Exception):
        Console().print(table)
        Console().print(f"genotype: {summary['genotype']}\nrun directory: {summary['run_dir']}")
