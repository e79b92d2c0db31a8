#!/usr/bin/env python
"""Search and retraining step speed: nasrun's default path against the plain per-op reference, side by side.

The reference is the per-op supernet (one module per edge and op, summed edge by edge: the readable
cells nasrun keeps, bitwise the AutoDL / quark0 networks) driven the way those repositories drive it:
eager PyTorch and ``loss.item()`` after every step. nasrun's path is its default: fused mixed ops and,
on CUDA, every step replayed from a CUDA graph. Both get the same device-resident batches (data loading
is not timed for either) and the same method code, so the ratio is the step itself. Rows: NB201 with
darts (V1), darts_2nd (V2), tse_darts, sp_darts, amended_darts; the DARTS space first and second order;
DARTS_V2 retraining. ms/step is the median of ``--repeats`` timed blocks after warm-up (which includes
CUDA-graph capture).

    python scripts/bench_search.py                       # sizes by device: paper sizes on CUDA, small on CPU
    python scripts/bench_search.py --device cuda --json bench.json
    python scripts/bench_search.py --rows nb201:darts darts:darts retrain --steps 30
    python scripts/bench_search.py --count-ops           # aten ops per step, per-op cells vs fused (any device)
    python scripts/bench_search.py --ranks 1 2            # data parallel: the same global batch on 1 and 2 processes

``--ranks`` starts each row under ``torchrun`` once per rank count (gloo on the CPU, NCCL on GPUs, one GPU per rank)
and reports ms per step of the global batch, the speed-up over 1 rank and the scaling efficiency (speed-up / ranks):
strong scaling, as ``trainer.batch_size`` is the global batch (``--sync-bn``: with BatchNorm statistics over it).

Each nasrun row on CUDA also reports the seconds its graphs spent capturing and in the self-check
(``trainer.cuda_graphs_verify``), the per-capture cost a run pays once per learning-rate change.
"""

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from nasrun.config import build
from nasrun.distributed import convert_sync_bn
from nasrun.retrain import Protocol, Retrainer
from nasrun.spaces import get_space
from nasrun.spaces.fused import compile_cells, set_fused
from nasrun.utils import resolve_device

ROWS = ["nb201:darts", "nb201:darts_2nd", "nb201:tse_darts", "nb201:sp_darts", "nb201:amended_darts",
        "darts:darts", "darts:darts_2nd", "retrain"]
# (space sizes, batch, image size) per device class: the papers' sizes on a GPU, small ones on a CPU
SIZES = {"cuda": {"nb201": ({"C": 16, "N": 5}, 64, 32), "darts": ({"C": 16, "layers": 8}, 64, 32),
                  "retrain": ({"C": 36, "layers": 20}, 96, 32)},
         "cpu": {"nb201": ({"C": 8, "N": 2}, 32, 32), "darts": ({"C": 8, "layers": 5}, 16, 32),
                 "retrain": ({"C": 16, "layers": 8}, 32, 32)}}
# DARTS-space rows use quark0's settings (α step first, plain momentum, weight decay 3e-4)
DARTS_SPACE = ["method.arch_first=true", "method.w_nesterov=false", "method.w_weight_decay=3e-4"]


def compose_method(name, extra=()):
    from hydra import compose, initialize_config_dir

    from nasrun.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("search", [f"method={name}", *extra]).method


def make_batches(n, batch, size, device, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        pair = [(torch.randn(batch, 3, size, size, generator=g).to(device),
                 torch.randint(0, classes, (batch,), generator=g).to(device)) for _ in range(2)]
        out.append(tuple(pair))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_search_row(space_name, method_name, sizes, device, fused, graphs, amp=False, compile_=False, sync_bn=False):
    torch.manual_seed(0)
    space = get_space(space_name, **sizes)
    sup = space.build_supernet(10).to(device)
    if sync_bn:
        convert_sync_bn(sup)
    sup = set_fused(sup, fused)
    if compile_:
        compile_cells(sup)
    extra = DARTS_SPACE if space_name == "darts" else []
    if method_name == "tse_darts":
        extra = [*extra, "method.inner_steps=10"]
    method = build(compose_method(method_name, extra), supernet=sup, space=space)
    method.use_cuda_graphs(graphs)
    step_graphs = method.graphs
    if amp and device.type == "cuda":
        method.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    method.on_epoch_start(1, 50)  # past SP-DARTS's warm-up: the batch-mixed step is timed
    group = getattr(method, "group_size", 1)

    def step(batches):
        if group > 1:
            return method.step_group(batches)
        return method.step(*batches[0])

    step.graphs = step_graphs
    return step, group


def build_retrain_row(sizes, device, graphs, amp=False, sync_bn=False):
    torch.manual_seed(0)
    space = get_space("darts")
    net = space.build_network("DARTS_V2", 10, C=sizes["C"], layers=sizes["layers"], auxiliary=True).to(device)
    if sync_bn:
        convert_sync_bn(net)
    p = Protocol("bench", sizes["C"], sizes["layers"], False, 0.4, 0.2, 16, 600, 96, 0.025, 0.0, "cosine", 0.97, 1,
                 0.9, 3e-4, 5.0, 0.0)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp and device.type == "cuda" \
        else contextlib.nullcontext
    trainer = Retrainer(net, p, autocast, cuda_graphs=graphs)
    trainer.on_epoch_start(300)  # mid-schedule: drop-path on

    def step(batches):
        return trainer.step(batches[0][0])

    step.graphs = trainer.graphs
    return step, 1


class OpCounter(TorchDispatchMode):
    """Counts the aten ops below autograd that compute (what a CUDA graph launches, about one kernel each): views,
    allocations (``empty*``) and profiler annotations excluded; a foreach op counts once."""

    def __init__(self):
        super().__init__()
        self.counts = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        schema = func._schema
        name = schema.name.split("::")[-1]
        view = any(r.alias_info is not None for r in schema.returns) and not any(
            a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
        if not (view or name.startswith(("empty", "new_empty", "_record_function")) or name in ("detach", "alias")):
            self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def count_ops(rows, device):
    """Ops of one step (after two warm-up steps) with the per-op reference cells and with nasrun's fused cells.

    Optimisers and gradient clipping run their multi-tensor (foreach) forms, as they do on CUDA, so a CPU count
    is the count of a GPU step."""
    import functools

    torch.nn.utils.clip_grad_norm_ = functools.partial(torch.nn.utils.clip_grad_norm_, foreach=True)
    for cls in (torch.optim.SGD, torch.optim.Adam):
        cls.__init__ = functools.partialmethod(cls.__init__, foreach=True)
    print(f"{'workload':22s} {'per-op':>8s} {'fused':>8s} {'fewer':>6s}   fused: largest kinds")
    results = []
    for row in rows:
        space_name, _, method_name = row.partition(":")
        sizes, batch, size = SIZES["cuda"][space_name]  # the papers' sizes: op counts do not depend on the device
        batches = make_batches(3, min(batch, 8), size, device)
        counts = {}
        for label, fast in (("per-op", False), ("fused", True)):
            if space_name == "retrain":
                step, group = build_retrain_row(sizes, device, False)
            else:
                step, group = build_search_row(space_name, method_name, sizes, device, fast, False)
            for b in batches[:2]:
                step([b] * group)
            counter = OpCounter()
            with counter:
                step([batches[2]] * group)
            counts[label] = counter.counts
        total = {k: sum(v.values()) // (group if space_name != "retrain" else 1) for k, v in counts.items()}
        top = sorted(counts["fused"].items(), key=lambda kv: -kv[1])[:5]
        rec = {"workload": row, "per_op_ops": total["per-op"], "fused_ops": total["fused"],
               "ratio": round(total["per-op"] / total["fused"], 2), "fused_top": dict(top)}
        results.append(rec)
        print(f"{row:22s} {total['per-op']:8d} {total['fused']:8d} {rec['ratio']:5.2f}×   "
              + ", ".join(f"{k} {v}" for k, v in top), flush=True)
    return results


def time_row(step, group, batches, steps, warmup, repeats, device, reference):
    """Median ms per batch; the reference reads the loss on the host after every step, as its loop logs it."""
    def run(n, offset):
        for k in range(0, n, group):
            chunk = [batches[(offset + k + i) % len(batches)] for i in range(group)]
            out = step(chunk)
            if reference:
                out["train_loss"].item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run(warmup * group, 0)
    sync(device)
    times = []
    for r in range(repeats):
        tic = time.perf_counter()
        run(steps, r * steps)
        sync(device)
        times.append((time.perf_counter() - tic) / steps * 1000)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def distributed_worker(args):
    """One rank of a ``--ranks`` measurement (started by torchrun): time the row's step on this rank's shard of the
    global batches; rank 0 writes ``{ms, ranks}`` to ``--json``."""
    from nasrun.distributed import WORLD, shard, start, world_settings

    start()
    device = resolve_device(args.device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    torch.set_num_threads(1)
    row = args.rows[0]
    space_name, _, method_name = row.partition(":")
    sizes, batch, size = SIZES[kind][space_name]
    batches = [tuple((shard(x), shard(y)) for x, y in pair) for pair in make_batches(4, batch, size, device)]
    with world_settings({"sync_bn": args.sync_bn}):
        if space_name == "retrain":
            step, group = build_retrain_row(sizes, device, False, sync_bn=args.sync_bn)
        else:
            step, group = build_search_row(space_name, method_name, sizes, device, True, False, sync_bn=args.sync_bn)
        ms, _ = time_row(step, group, batches, args.steps, args.warmup, args.repeats, device, False)
    if WORLD.main:
        with open(args.json, "w") as f:
            json.dump({"ms": ms, "ranks": WORLD.size, "batch": batch}, f)


def distributed_rows(args, device):
    """``--ranks``: each row under torchrun at each rank count; ms per global step, speed-up, efficiency."""
    import subprocess
    import sys
    import tempfile

    kind = "cuda" if device.type == "cuda" else "cpu"
    steps, warmup = args.steps or (30 if kind == "cuda" else 4), args.warmup or (8 if kind == "cuda" else 2)
    print(f"data parallel ({'NCCL' if kind == 'cuda' else 'gloo'}, {'synced' if args.sync_bn else 'per-rank'} "
          f"BatchNorm); {steps} steps × {args.repeats} after {warmup} warm-up; the global batch split over the ranks")
    print(f"{'workload':22s} {'batch':>5s} {'ranks':>5s} {'ms/step':>9s} {'img/s':>9s} {'speed-up':>8s} {'efficiency':>10s}")
    results = []
    for row in args.rows:
        base = None
        for ranks in args.ranks:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                       __file__, "--worker", "--rows", row, "--device", args.device, "--steps", str(steps), "--warmup",
                       str(warmup), "--repeats", str(args.repeats), "--json", out.name] + (["--sync-bn"] if args.sync_bn
                                                                                          else [])
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                rec = json.load(open(out.name))
            if ranks == 1:
                base = rec["ms"]
            speedup = base / rec["ms"] if base else None
            rec.update(workload=row, speedup=speedup and round(speedup, 2),
                       efficiency=speedup and round(speedup / ranks, 2), images_per_s=round(rec["batch"] / rec["ms"] * 1e3, 1))
            results.append(rec)
            print(f"{row:22s} {rec['batch']:5d} {ranks:5d} {rec['ms']:9.1f} {rec['images_per_s']:9.1f} "
                  f"{'-' if speedup is None else f'{speedup:7.2f}×':>8s} "
                  f"{'-' if speedup is None else format(speedup / ranks, '.2f'):>10s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "sync_bn": args.sync_bn, "rows": results}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--rows", nargs="+", default=ROWS, help=f"subset of {ROWS}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: 30 on CUDA, 4 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on nasrun's path (trainer.amp)")
    p.add_argument("--compile", action="store_true", help="per-cell torch.compile on nasrun's path (trainer.compile)")
    p.add_argument("--no-graphs", action="store_true", help="nasrun's path without CUDA graphs (fused ops only)")
    p.add_argument("--count-ops", action="store_true", help="count aten ops per step (per-op vs fused) and exit")
    p.add_argument("--ranks", type=int, nargs="+", help="data-parallel rows: the rank counts to run (e.g. 1 2 4 8)")
    p.add_argument("--sync-bn", action="store_true", help="with --ranks: BatchNorm over the global batch")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return distributed_worker(args)
    device = resolve_device(args.device)
    if args.ranks:
        return distributed_rows(args, device)
    if args.count_ops:
        results = count_ops([r for r in args.rows if r != "retrain"], device)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"torch": torch.__version__, "rows": results}, f, indent=1)
        return
    kind = "cuda" if device.type == "cuda" else "cpu"
    steps = args.steps or (30 if kind == "cuda" else 4)
    warmup = args.warmup or (8 if kind == "cuda" else 2)
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if kind == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {steps} steps × {args.repeats} after {warmup} warm-up; "
          f"nasrun path: fused ops{'' if args.no_graphs or kind == 'cpu' else ', CUDA graphs'}"
          f"{', bf16' if args.amp else ''}{', compiled cells' if args.compile else ''}")
    header = (f"{'workload':22s} {'batch':>5s} {'ref ms':>9s} {'nasrun ms':>10s} {'speed-up':>8s} {'img/s':>9s} "
              f"{'ref MB':>8s} {'nasrun MB':>9s} {'mem':>5s} {'capture s':>9s} {'verify s':>8s}")
    print(header)
    results = []
    for row in args.rows:
        space_name, _, method_name = row.partition(":")
        sizes, batch, size = SIZES[kind][space_name]
        batches = make_batches(4, batch, size, device)
        timing = {}
        for label, fast in (("reference", False), ("nasrun", True)):
            graphs = fast and device.type == "cuda" and not args.no_graphs
            if space_name == "retrain":
                step, group = build_retrain_row(sizes, device, graphs, fast and args.amp)
            else:
                step, group = build_search_row(space_name, method_name, sizes, device, fast, graphs, fast and args.amp,
                                               fast and args.compile)
            timing[label] = time_row(step, group, batches, steps, warmup, args.repeats, device, not fast)
            if fast:
                graph_seconds = dict(step.graphs.seconds)
            del step
            if kind == "cuda":
                torch.cuda.empty_cache()
        (ref_ms, ref_mb), (ms, mb) = timing["reference"], timing["nasrun"]
        rec = {"workload": row, "batch": batch, "sizes": sizes, "ref_ms": round(ref_ms, 2), "nasrun_ms": round(ms, 2),
               "speedup": round(ref_ms / ms, 2), "images_per_s": round(batch / ms * 1000, 1),
               "ref_peak_mb": ref_mb and round(ref_mb), "nasrun_peak_mb": mb and round(mb),
               "memory_ratio": round(mb / ref_mb, 2) if mb and ref_mb else None,
               "capture_s": round(graph_seconds["capture"], 3), "verify_s": round(graph_seconds["verify"], 3)}
        results.append(rec)
        mem = f"{rec['memory_ratio']:5.2f}" if rec["memory_ratio"] else f"{'-':>5s}"
        print(f"{row:22s} {batch:5d} {ref_ms:9.1f} {ms:10.1f} {ref_ms / ms:7.2f}× {rec['images_per_s']:9.1f} "
              f"{ref_mb or 0:8.0f} {mb or 0:9.0f} {mem} {rec['capture_s']:9.2f} {rec['verify_s']:8.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "steps": steps, "repeats": args.repeats,
                       "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
