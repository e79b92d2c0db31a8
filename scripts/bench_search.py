#!/usr/bin/env python
"""Images/s and peak memory of search steps per space × method: nasrun's loop vs a plain reference loop.

The reference loop is written here the way the reference repositories (quark0/darts, AutoDL) run a
search: per-sample augmentation on the CPU, a host→device copy per batch, float32, and ``loss.item()``
every step. Both loops drive the same supernet and the same method object, so the ratio isolates the
loop itself (device-resident data, on-device augmentation, bf16 autocast, no host syncs).

    python scripts/bench_search.py --device cuda --steps 50
"""

import argparse
import time

import torch
import torch.nn.functional as F

from nasrun.config import build
from nasrun.data import Augment, SearchStream, make_synthetic
from nasrun.spaces import get_space
from nasrun.utils import resolve_device

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def make_method(space_name, method_name, C, N, device, amp):
    from hydra import compose, initialize_config_dir

    from nasrun.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("search", [f"method={method_name}"])
    torch.manual_seed(0)
    space = get_space(space_name, C=C, N=N)
    sup = space.build_supernet(10).to(device)
    method = build(cfg.method, supernet=sup, space=space)
    if amp and device.type == "cuda":
        method.autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return method


def reference_batch(x, y, idx, gen):
    """torchvision-style per-sample RandomCrop(pad 4) + HFlip + Normalize on the CPU."""
    out = []
    for i in idx.tolist():
        img = F.pad(x[i].float(), (4, 4, 4, 4))
        oy, ox = torch.randint(0, 9, (2,), generator=gen).tolist()
        img = img[:, oy:oy + 32, ox:ox + 32]
        if torch.rand(1, generator=gen).item() < 0.5:
            img = img.flip(2)
        out.append((img / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])
    return torch.stack(out), y[idx]


def run_reference(method, data, batch, steps, warmup, device):
    gen = torch.Generator().manual_seed(0)
    n = len(data.train_x) // 2
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            tic = time.perf_counter()
        t = torch.randint(0, n, (batch,), generator=gen)
        v = torch.randint(n, 2 * n, (batch,), generator=gen)
        xt, yt = reference_batch(data.train_x, data.train_y, t, gen)
        xv, yv = reference_batch(data.train_x, data.train_y, v, gen)
        out = method.step((xt.to(device), yt.to(device)), (xv.to(device), yv.to(device)))
        out["train_loss"].item()  # the reference loops log every step
    sync(device)
    return batch * steps / (time.perf_counter() - tic)


def run_nasrun(method, data, batch, steps, warmup, device, channels_last):
    n = len(data.train_x) // 2
    aug = Augment(MEAN, STD, crop_pad=4, flip=True)
    stream = SearchStream(data.train_x, data.train_y, torch.arange(n), torch.arange(n, 2 * n), batch, aug,
                          "nb201", 0, device)
    stream.start_epoch(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        method.supernet.to(memory_format=torch.channels_last)
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            tic = time.perf_counter()
        (xt, yt), (xv, yv) = stream.batch(k % stream.steps)
        method.step((xt.contiguous(memory_format=layout), yt), (xv.contiguous(memory_format=layout), yv))
    sync(device)
    return batch * steps / (time.perf_counter() - tic)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mb(fn, device):
    if device.type != "cuda":
        return fn(), None
    torch.cuda.reset_peak_memory_stats(device)
    speed = fn()
    return speed, torch.cuda.max_memory_allocated(device) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--spaces", nargs="+", default=["nb201"])
    p.add_argument("--methods", nargs="+", default=["darts", "darts_2nd"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--C", type=int, default=16)
    p.add_argument("--N", type=int, default=5)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--amp", action="store_true", help="bf16 autocast in nasrun's loop (trainer.amp)")
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = make_synthetic(n_train=4096, n_test=16, image_size=32, num_classes=10, seed=0)
    print(f"device={device} batch={args.batch} C={args.C} N={args.N} steps={args.steps} amp={args.amp} "
          f"channels_last={args.channels_last} "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}")
    print(f"{'space':14s} {'method':10s} {'ref img/s':>10s} {'nasrun img/s':>13s} {'speed-up':>9s} "
          f"{'ref MB':>8s} {'nasrun MB':>10s} {'mem ratio':>9s}")
    for space in args.spaces:
        for name in args.methods:
            ref_method = make_method(space, name, args.C, args.N, device, False)
            ref, ref_mb = peak_mb(lambda m=ref_method: run_reference(m, data, args.batch, args.steps, args.warmup,
                                                                     device), device)
            del ref_method
            our_method = make_method(space, name, args.C, args.N, device, args.amp)
            ours, our_mb = peak_mb(lambda m=our_method: run_nasrun(m, data, args.batch, args.steps, args.warmup, device,
                                                                   args.channels_last), device)
            del our_method
            mem = f"{our_mb / ref_mb:9.2f}" if ref_mb else f"{'-':>9s}"
            print(f"{space:14s} {name:10s} {ref:10.1f} {ours:13.1f} {ours / ref:9.2f} "
                  f"{ref_mb or 0:8.0f} {our_mb or 0:10.0f} {mem}")


if __name__ == "__main__":
    main()
