"""``run_search(cfg, out_dir)``: train a supernet, derive the genotype, query the benchmark.

The loop reads top to bottom: build everything, resume if a checkpoint exists, then per epoch run the
method's steps, log one metrics line, write a checkpoint; finally select and summarise.
"""

import contextlib
import functools
import math
import random
import resource
import signal
import threading
import time

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .benchmarks import open_benchmark
from .config import build
from .data import BENCHMARK_NAMES, build_search_stream, load_dataset
from .errors import Interrupted, UserError
from .rundir import RunDir
from .utils import resolve_device

console = Console(stderr=True)
SUMS = ("train_loss", "train_correct", "train_n", "valid_loss", "valid_correct", "valid_n")


class StopFlag:
    """Set by SIGTERM/SIGUSR1 (Slurm preemption); the loop checkpoints at the next step boundary."""

    def __init__(self):
        self.signal = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def build_data(cfg, space, device):
    """Dataset config → (data, search stream, protocol)."""
    d = dict(cfg.dataset)
    name, root, download, synthetic = d.pop("name"), d.pop("root"), d.pop("download"), d.pop("synthetic", None)
    data = load_dataset(name, root, download, synthetic)
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
    from .benchmarks.nb201 import DATASETS

    return {ds: bench.query(genotype, ds) for ds in DATASETS}


def run_search(cfg, out_dir):
    """Run (or resume) one search in ``out_dir`` and return its summary dict."""
    run = RunDir(out_dir, cfg)
    state = run.load_checkpoint()
    if state is not None and state.get("finished"):
        console.print(f"[green]run already complete[/green]: {run.path}")
        print_summary(state["summary"])
        return state["summary"]
    run.start()
    t = cfg.trainer
    device = resolve_device(t.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.seed)
    space = build(cfg.space)
    data, stream, protocol = build_data(cfg, space, device)
    supernet = space.build_supernet(data.num_classes, in_channels=data.train_x.shape[1]).to(device)
    if t.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    method = build(cfg.method, supernet=supernet, space=space)
    if t.amp and device.type == "cuda":
        method.autocast = functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16)
    selector = build(cfg.selector)
    bench = open_benchmark(cfg.benchmark.name, cfg.benchmark.path, space.benchmark)
    bench_ds = cfg.benchmark.dataset or BENCHMARK_NAMES.get(data.name, "cifar10")

    epoch, step, history, elapsed = 0, 0, [], 0.0
    sums = {k: torch.zeros((), device=device, dtype=torch.float64) for k in SUMS}
    if state is not None:
        supernet.load_state_dict(state["supernet"])
        method.load_state_dict(state["method"])
        set_rng_state(state["rng"])
        epoch, step, history, elapsed = state["epoch"], state["step"], state["history"], state["elapsed"]
        sums = {k: v.to(device) for k, v in state["sums"].items()}
        if step:
            stream.load_state_dict(state["stream"])
        console.print(f"resuming {run.path} at epoch {epoch} step {step}")
    run.truncate_metrics(epoch)

    def checkpoint(finished=False, summary=None):
        run.save_checkpoint({"epoch": epoch, "step": step, "history": history, "elapsed": elapsed,
                             "supernet": supernet.state_dict(), "method": method.state_dict(), "rng": rng_state(),
                             "stream": stream.state_dict(), "sums": {k: v.cpu() for k, v in sums.items()},
                             "finished": finished, "summary": summary})

    console.print(f"search: space={space.name} method={method.name} dataset={data.name} ({protocol} split, "
                  f"{stream.steps} steps/epoch) device={device} → {run.path}")
    bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn(), console=console, transient=True, disable=not t.progress)
    layout = torch.channels_last if t.channels_last else torch.contiguous_format
    try:
        with StopFlag() as stop, bar:
            while epoch < t.epochs:
                method.on_epoch_start(epoch, t.epochs)
                if step == 0:
                    stream.start_epoch(epoch)
                task = bar.add_task("", total=stream.steps, completed=step, epoch=f"{epoch + 1}/{t.epochs}")
                tic = time.perf_counter()
                while step < stream.steps:
                    (xt, yt), (xv, yv) = stream.batch(step)
                    xt, xv = xt.contiguous(memory_format=layout), xv.contiguous(memory_format=layout)
                    out = method.step((xt, yt), (xv, yv))
                    _accumulate(sums, out, len(yt), len(yv))
                    step += 1
                    bar.advance(task)
                    if stop.signal:
                        elapsed += time.perf_counter() - tic
                        checkpoint()
                        raise Interrupted(f"received {stop.signal}; checkpoint written at epoch {epoch} step {step} "
                                          f"in {run.path}; rerun the same command to resume")
                bar.remove_task(task)
                seconds = time.perf_counter() - tic
                elapsed += seconds
                record = epoch_record(epoch, method, space, sums, seconds, bench, bench_ds)
                if not all(math.isfinite(record[k]) for k in ("train_loss", "valid_loss") if record[k] is not None):
                    kept = (f"the checkpoint after epoch {epoch - 1} is kept in {run.path}" if epoch
                            else "no epoch had completed, so no checkpoint was written")
                    raise UserError(f"loss became NaN/inf in epoch {epoch}; {kept}; lower method.w_lr/arch_lr "
                                    "or check the data (dataset.mean/std)")
                history.append(record)
                run.append_metrics(record)
                log_epoch(record, t.epochs)
                epoch, step = epoch + 1, 0
                sums = {k: torch.zeros_like(v) for k, v in sums.items()}
                checkpoint()
    except torch.OutOfMemoryError:
        total = torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else float("nan")
        raise UserError(f"out of memory on {device} ({total:.1f} GiB) at trainer.batch_size={t.batch_size}; "
                        "lower trainer.batch_size or space.C") from None

    selections = selector.select(space=space, method=method, history=history, stream=stream)
    label, genotype = selections[0]
    text = space.format_genotype(genotype)
    run.write("genotype.json", {"space": space.name, "selector": label, "epoch": t.epochs - 1, "genotype": text})
    if len(selections) > 1:
        for lab, g in selections:
            run.write(f"genotypes/{lab}.json", {"space": space.name, "selector": lab, "genotype": space.format_genotype(g)})
    summary = {"genotype": text, "space": space.name, "method": method.name, "selector": label,
               "dataset": data.name, "seed": cfg.seed, "epochs": t.epochs, **space.genotype_stats(genotype),
               "benchmark": query_all(bench, genotype), "benchmark_source": getattr(bench, "source", None),
               "search_seconds": round(elapsed, 2), "peak_memory_mb": round(peak_memory_mb(device), 1),
               "run_dir": str(run.path)}
    run.write("summary.json", summary)
    checkpoint(finished=True, summary=summary)
    print_summary(summary)
    return summary


def _accumulate(sums, out, n_train, n_valid):
    if "train_loss" in out:
        sums["train_loss"] += out["train_loss"].double() * n_train
        sums["train_correct"] += out["train_correct"]
        sums["train_n"] += n_train
    if "valid_loss" in out:
        sums["valid_loss"] += out["valid_loss"].double() * n_valid
        sums["valid_correct"] += out["valid_correct"]
        sums["valid_n"] += n_valid


def epoch_record(epoch, method, space, sums, seconds, bench, bench_ds):
    """One metrics.jsonl object (the only host sync of the epoch happens here)."""
    s = {k: v.item() for k, v in sums.items()}

    def ratio(a, b, scale=1.0):
        return scale * s[a] / s[b] if s[b] else None

    genotype = space.derive(method.derive_weights())
    return {"epoch": epoch, **method.lrs(),
            "train_loss": ratio("train_loss", "train_n"), "train_acc": ratio("train_correct", "train_n", 100),
            "valid_loss": ratio("valid_loss", "valid_n"), "valid_acc": ratio("valid_correct", "valid_n", 100),
            "seconds": round(seconds, 3), "images_per_s": round(s["train_n"] / seconds, 1) if seconds else None,
            "alpha": {k: [[round(x, 5) for x in row] for row in v.tolist()] for k, v in method.edge_weights().items()},
            "genotype": space.format_genotype(genotype), **space.genotype_stats(genotype),
            "benchmark": (bench.query(genotype, bench_ds) if bench is not None else None)}


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
                "search_seconds", "peak_memory_mb", "run_dir"):
        table.add_row(key, str(summary.get(key)))
    for ds, res in (summary.get("benchmark") or {}).items():
        table.add_row(f"{ds} valid / test", "not in table" if res is None else
                      f"{res['valid_acc']:.2f}% / {res['test_acc']:.2f}%")
    with contextlib.suppress(Exception):
        Console().print(table)
        Console().print(f"genotype: {summary['genotype']}\nrun directory: {summary['run_dir']}")
