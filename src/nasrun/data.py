"""Datasets as uint8 tensors, split protocols and on-device augmentation (methods.md §2, design.md §7).

The whole dataset lives on the training device as one uint8 tensor; random crop with padding, flip,
normalisation and cutout run on batches there. Every random draw comes from one CPU generator that
is re-seeded from (seed, epoch) at each epoch start, so the data order of any epoch, and a resume
from the middle of one, is exactly reproducible.
"""

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_unflatten

from .distributed import WORLD, check_batch, shard
from .errors import UserError

SPLIT_DIR = Path(__file__).resolve().parent / "splits"

# (dataset, protocol) -> (mean, std) in [0, 1] units (methods.md §2.3).
NORMALISATION = {
    ("cifar10", "nb201"): ([125.3 / 255, 123.0 / 255, 113.9 / 255], [63.0 / 255, 62.1 / 255, 66.7 / 255]),
    ("cifar10", "darts"): ([0.49139968, 0.48215827, 0.44653124], [0.24703233, 0.24348505, 0.26158768]),
    ("cifar100", "nb201"): ([129.3 / 255, 124.1 / 255, 112.4 / 255], [68.2 / 255, 65.4 / 255, 70.4 / 255]),
    ("cifar100", "darts"): ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
    ("svhn", "darts"): ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970]),
    ("imagenet16_120", "nb201"): ([122.68 / 255, 116.66 / 255, 104.01 / 255], [63.22 / 255, 61.26 / 255, 65.09 / 255]),
    ("imagenet16_120", "darts"): ([122.68 / 255, 116.66 / 255, 104.01 / 255], [63.22 / 255, 61.26 / 255, 65.09 / 255]),
}
# Official NB201 split files (D-X-Y/AutoDL-Projects, MIT): (file, key of search-valid, indexes into).
NB201_SPLITS = {
    "cifar10": ("cifar-split.txt", "valid", "train"),
    "cifar100": ("cifar100-test-split.txt", "xvalid", "test"),
    "imagenet16_120": ("imagenet-16-120-test-split.txt", "xvalid", "test"),
}
BENCHMARK_NAMES = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16_120": "ImageNet16-120"}


@dataclass
class ImageData:
    """A dataset held as uint8 NCHW tensors plus integer labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def data_root(root):
    """``dataset.root``, else ``$NASRUN_DATA``, else ``./data``."""
    return Path(os.path.expanduser(root or os.environ.get("NASRUN_DATA") or "data"))


def _missing(name, where, how, download_error=None):
    why = f"the download failed ({download_error})" if download_error else "downloading is off (dataset.download=false)"
    return UserError(f"{name} not found at {where} and {why}; {how} (or set dataset.root=DIR / $NASRUN_DATA)")


def _try_download(fn):
    """Run a torchvision downloader; return None on success or a short reason on failure."""
    try:
        fn()
        return None
    except Exception as exc:  # noqa: BLE001 - offline, HTTP errors, bad archives: all mean "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def _unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _chw(flat, size):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(flat, dtype=np.uint8).reshape(-1, 3, size, size)))


def read_cifar(name, root, download):
    """CIFAR-10/100 from the python-version pickle batches (torchvision's layout and downloader)."""
    folder, train_files, test_files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    }[name]
    base = root / folder
    error = None
    if not all((base / f).exists() for f in train_files + test_files) and download:
        from .tvcompat import import_torchvision

        def fetch():
            tv = import_torchvision()
            cls = tv.datasets.CIFAR10 if name == "cifar10" else tv.datasets.CIFAR100
            cls(str(root), train=True, download=True)

        error = _try_download(fetch)
    if not all((base / f).exists() for f in train_files + test_files):
        raise _missing(name, base, f"put the CIFAR python-version batches ({', '.join(train_files + test_files)}) there",
                       error)

    def load(files):
        xs, ys = [], []
        for f in files:
            try:
                d = _unpickle(base / f)
                xs.append(_chw(d["data"], 32))
                ys.extend(d[key])
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"{base / f} is not a readable CIFAR batch ({exc}); re-download it") from None
        return torch.cat(xs), torch.tensor(ys, dtype=torch.int64)

    (trx, try_), (tex, tey) = load(train_files), load(test_files)
    return ImageData(name, trx, try_, tex, tey, 10 if name == "cifar10" else 100)


def read_svhn(root, download):
    """SVHN from torchvision's ``train_32x32.mat`` / ``test_32x32.mat`` (label 10 means digit 0)."""
    files = {"train": root / "train_32x32.mat", "test": root / "test_32x32.mat"}
    error = None
    if not all(p.exists() for p in files.values()) and download:
        from .tvcompat import import_torchvision

        def fetch():
            tv = import_torchvision()
            for split in files:
                tv.datasets.SVHN(str(root), split=split, download=True)

        error = _try_download(fetch)
    if not all(p.exists() for p in files.values()):
        raise _missing("svhn", root, "put train_32x32.mat and test_32x32.mat there", error)
    from scipy.io import loadmat

    out = []
    for p in files.values():
        m = loadmat(p)
        x = torch.from_numpy(np.ascontiguousarray(np.transpose(m["X"], (3, 2, 0, 1))))
        y = torch.from_numpy(m["y"].astype(np.int64).reshape(-1) % 10)
        out += [x, y]
    return ImageData("svhn", *out, 10)


def read_imagenet16(root, num_classes=120):
    """ImageNet16-120: the downsampled-ImageNet pickles, keeping labels 1…120 mapped to 0…119."""
    base = root / "ImageNet16"
    train_files = [base / f"train_data_batch_{i}" for i in range(1, 11)]
    files = train_files + [base / "val_data"]
    if not all(p.exists() for p in files):
        raise _missing("imagenet16_120", base, "download ImageNet16 (Chrabaszcz et al.) as in NAS-Bench-201 and "
                                              "put train_data_batch_1..10 and val_data there")

    def load(paths):
        xs, ys = [], []
        for p in paths:
            d = _unpickle(p)
            x, y = np.asarray(d["data"]), np.asarray(d["labels"])
            keep = (y >= 1) & (y <= num_classes)
            xs.append(_chw(x[keep], 16))
            ys.append(torch.from_numpy(y[keep].astype(np.int64) - 1))
        return torch.cat(xs), torch.cat(ys)

    return ImageData("imagenet16_120", *load(train_files), *load([base / "val_data"]), num_classes)


def read_digits():
    """scikit-learn's bundled 8×8 digits (offline): 1,437 train / 360 test, grey replicated to RGB."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8))[:, None].repeat(1, 3, 1, 1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return ImageData("digits", x[:1437], y[:1437], x[1437:], y[1437:], 10)


def make_synthetic(n_train, n_test, image_size, num_classes, seed):
    """Learnable random images: a fixed uint8 prototype per class plus noise (tests and benchmarks)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randint(0, 256, (num_classes, 3, image_size, image_size), generator=g).float()

    def draw(n):
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = 48 * torch.randn(n, 3, image_size, image_size, generator=g)
        return (protos[y] + noise).clamp(0, 255).to(torch.uint8), y

    return ImageData("synthetic", *draw(n_train), *draw(n_test), num_classes)


def load_dataset(name, root=None, download=True, synthetic=None):
    """Read a dataset by config name into an :class:`ImageData`."""
    root = data_root(root)
    if name in ("cifar10", "cifar100"):
        return read_cifar(name, root, download)
    if name == "svhn":
        return read_svhn(root, download)
    if name == "imagenet16_120":
        return read_imagenet16(root)
    if name == "digits":
        return read_digits()
    if name == "synthetic":
        return make_synthetic(**(synthetic or {}))
    raise UserError(f"unknown dataset '{name}'")


def read_split_file(fname, key):
    """Indices from an official NB201 split file (JSON: ``key: ["int", ["0", "5", ...]]``)."""
    with open(SPLIT_DIR / fname) as f:
        return torch.tensor([int(i) for i in json.load(f)[key][1]], dtype=torch.int64)


class Augment:
    """Batch augmentation on the device: random crop with zero padding, horizontal flip, normalise, cutout.

    Args:
        mean, std: per-channel normalisation in [0, 1] units.
        crop_pad: padding of the random crop (0 disables the crop).
        flip: random horizontal flip with probability 0.5.
        cutout: side length of the cutout square (0 disables), applied after normalisation.
        cutout_prob: probability that cutout is applied to an image.
    """

    def __init__(self, mean, std, crop_pad=4, flip=True, cutout=0, cutout_prob=1.0):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)
        self.crop_pad, self.flip, self.cutout, self.cutout_prob = crop_pad, flip, cutout, cutout_prob
        self._stats = {}

    def stats(self, device):
        """(mean, std) on ``device``, copied there once (a copy per batch would synchronise with the GPU)."""
        if device not in self._stats:
            self._stats[device] = (self.mean.to(device), self.std.to(device))
        return self._stats[device]

    def normalise(self, x):
        x = x.float().div_(255)
        mean, std = self.stats(x.device)
        return (x - mean) / std

    def draw(self, n, size, gen):
        """Random parameters of one batch, drawn on the CPU generator (checkpointable)."""
        p = self.crop_pad
        return {"offset": torch.randint(0, 2 * p + 1, (n, 2), generator=gen) if p else None,
                "flip": torch.rand(n, generator=gen) < 0.5 if self.flip else None,
                "centre": torch.randint(0, size, (n, 2), generator=gen) if self.cutout else None,
                "apply": torch.rand(n, generator=gen) < self.cutout_prob if self.cutout else None}

    def __call__(self, x, params):
        dev = x.device
        params = {k: (v.to(dev, non_blocking=True) if v is not None else None) for k, v in params.items()}
        n, c, h, w = x.shape
        x = x.float()
        if params["offset"] is not None:
            p = self.crop_pad
            x = F.pad(x, (p, p, p, p))
            rows = params["offset"][:, :1] + torch.arange(h, device=dev)
            cols = params["offset"][:, 1:] + torch.arange(w, device=dev)
            x = x.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
            x = x.gather(3, cols[:, None, None, :].expand(n, c, h, w))
        if params["flip"] is not None:
            x = torch.where(params["flip"][:, None, None, None], x.flip(3), x)
        mean, std = self.stats(dev)
        x = (x / 255 - mean) / std
        if params["centre"] is not None:
            half = self.cutout // 2
            ar = torch.arange(h, device=dev)
            cy, cx = params["centre"][:, :1], params["centre"][:, 1:]
            my = (ar >= cy - half) & (ar < cy + half)
            mx = (ar >= cx - half) & (ar < cx + half)
            hole = my[:, :, None] & mx[:, None, :] & params["apply"][:, None, None]
            x = x * (~hole)[:, None].to(x.dtype)
        return x


def check_cutout(key, length, size):
    """Refuse a cutout square as large as the images (every image blanked: training at chance)."""
    if length and length >= size:
        raise UserError(f"{key}={length} blanks whole {size}×{size} images (training at chance); use at most "
                        f"{size // 2} (DARTS: 16 on 32 px) or 0 to turn it off")


class SearchStream:
    """Search batches ``((x_tr, y_tr), (x_val, y_val))`` drawn on the device.

    ``pairing="nb201"`` pairs every train sample with a uniformly random valid sample (AutoDL, with
    replacement); ``pairing="darts"`` draws a fresh random valid minibatch each step (quark0).
    ``train_draw="epoch"`` walks a permutation of the train split each epoch; ``"fresh"`` draws an
    independent random train minibatch each step (darts-pt's ``next(iter(train_queue))``).

    Every random draw of an epoch (order, valid samples, crop/flip/cutout parameters) comes from one CPU
    generator seeded by (seed, epoch), drawn step by step in the same order at :meth:`start_epoch` and
    moved to the device in one copy; ``batch(step)`` then only indexes and augments on the device (no
    host-device transfer or synchronisation inside an epoch), and an epoch is a pure function of
    (seed, epoch): a resume mid-epoch calls :meth:`start_epoch` again.
    """

    def __init__(self, x, y, train_idx, valid_idx, batch_size, augment, pairing, seed, device, train_draw="epoch"):
        if train_draw not in ("epoch", "fresh"):
            raise UserError(f"unknown dataset.train_draw '{train_draw}'; choose epoch or fresh")
        self.x, self.y = x.to(device), y.to(device)
        self.train_idx, self.valid_idx = train_idx, valid_idx
        self.batch_size, self.augment, self.pairing, self.seed = batch_size, augment, pairing, seed
        self.train_draw = train_draw
        self.valid_from_test = False  # the NB201 protocols of CIFAR-100 / ImageNet16-120 validate on test images
        self.device = device
        for name, idx in (("search-train", train_idx), ("search-valid", valid_idx)):
            if idx is not None and len(idx) < batch_size:  # no full batch: no step, or a silently smaller batch
                raise UserError(f"trainer.batch_size={batch_size} is larger than the {name} split ({len(idx)} images); "
                                "lower trainer.batch_size or use more data")
        check_batch("trainer.batch_size", batch_size)
        self.steps = -(-len(train_idx) // batch_size)
        self.gen = torch.Generator()
        self.epoch, self.tables = None, None

    def merge_train_val(self):
        """Train on search-train ∪ search-valid, and draw valid batches from the same union (rubinxin/TSE's
        ``merge_train_val_supernet``: ``train_split = train_split + valid_split; valid_split = train_split``)."""
        if self.valid_idx is None:
            return
        if self.valid_from_test:
            raise UserError("merge_train_val would train on test images here (this NB201 split validates on half of "
                            "the test set); use dataset=cifar10 or dataset.split=darts")
        merged = torch.cat([self.train_idx, self.valid_idx])
        self.train_idx, self.valid_idx = merged, merged
        self.steps = -(-len(merged) // self.batch_size)

    def single_level(self):
        """Draw both batches of a step from the training images: the union of both halves where the valid split is
        training data, the train split alone where it holds test images (GAEA's single-level loaders, two independent
        draws from the dataset's training set)."""
        if self.valid_from_test:
            self.valid_idx = self.train_idx
        else:
            self.merge_train_val()

    def start_epoch(self, epoch):
        """Re-seed from (seed, epoch) and draw all of this epoch's random choices."""
        self.gen.manual_seed(self.seed * 100_003 + epoch)
        self.epoch = epoch
        perm = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen)]
        size, bs = self.x.shape[-1], self.batch_size
        steps = []
        for step in range(self.steps):
            if self.train_draw == "fresh":
                t = self.train_idx[torch.randperm(len(self.train_idx), generator=self.gen)[:bs]]
            else:
                t = perm[step * bs:(step + 1) * bs]
            drawn = {"t": t}
            if self.valid_idx is not None:
                nv = len(self.valid_idx)
                if self.pairing == "nb201":
                    drawn["v"] = self.valid_idx[torch.randint(0, nv, (len(t),), generator=self.gen)]
                else:
                    drawn["v"] = self.valid_idx[torch.randperm(nv, generator=self.gen)[:bs]]
            drawn["pt"] = self.augment.draw(len(t), size, self.gen)
            if self.valid_idx is not None:
                drawn["pv"] = self.augment.draw(len(drawn["v"]), size, self.gen)
            steps.append(shard_step(drawn))
        self.tables = _to_device_once(steps, self.device)

    def batch(self, step):
        """``(train_batch, valid_batch)``; ``valid_batch`` is None for a stream without a valid split."""
        d = self.tables[step]
        t = d["t"]
        train = (self.augment(self.x[t], d["pt"]), self.y[t])
        if self.valid_idx is None:
            return train, None
        v = d["v"]
        return train, (self.augment(self.x[v], d["pv"]), self.y[v])

    def valid_batches(self, gen=None, max_batches=None):
        """One pass over the valid split in batches: with ``gen``, in a random order and with the train
        augmentation drawn from ``gen`` (darts-pt's ``valid_queue``: a SubsetRandomSampler over images with
        the train transform); without, in index order and only normalised."""
        idx = self.valid_idx
        if gen is not None:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        chunks = list(idx.split(self.batch_size))[:max_batches]
        size = self.x.shape[-1]
        drawn = [{"i": c, "p": self.augment.draw(len(c), size, gen) if gen is not None else None} for c in chunks]
        for d in _to_device_once(drawn, self.device):
            i = d["i"]
            x = self.augment(self.x[i], d["p"]) if gen is not None else self.augment.normalise(self.x[i])
            yield x, self.y[i]



def shard_step(drawn):
    """This rank's share of one step's global draws (one process: all of them): the same rows of the train indices
    and of their augmentation parameters, and of the valid ones (:func:`nasrun.distributed.shard`)."""
    if not WORLD.collective:
        return drawn
    n_t, n_v = len(drawn["t"]), len(drawn["v"]) if "v" in drawn else 0
    out = {"t": shard(drawn["t"]), "pt": {k: shard(v, n_t) for k, v in drawn["pt"].items()}}
    if "v" in drawn:
        out["v"] = shard(drawn["v"])
        out["pv"] = {k: shard(v, n_v) for k, v in drawn["pv"].items()}
    return out


def _to_device_once(steps, device):
    """The per-step draws (nested dicts of CPU tensors / None) as device tensors, in one transfer."""
    tensors, spec = tree_flatten(steps)
    if device.type == "cpu" or not tensors:
        return steps
    packed = torch.cat([t.reshape(-1).to(torch.int64) for t in tensors])
    if torch.cuda.is_available():
        packed = packed.pin_memory()
    parts = packed.to(device, non_blocking=True).split([t.numel() for t in tensors])
    return tree_unflatten([p.view(t.shape).to(t.dtype) for p, t in zip(parts, tensors)], spec)


def build_search_stream(data, split, space_split, batch_size, seed, device, crop_pad, flip, cutout,
                        cutout_prob, train_portion, mean=None, std=None, train_draw="epoch"):
    """Apply the split protocol (methods.md §2.1-2.2) and return a :class:`SearchStream`.

    ``split="auto"`` uses the space's protocol, falling back to the DARTS 50/50 split for datasets
    without an official NB201 split file.
    """
    protocol = split if split != "auto" else space_split
    if protocol == "nb201" and data.name not in NB201_SPLITS:
        if split == "nb201":
            raise UserError(f"dataset {data.name} has no official NB201 split; use dataset.split=darts")
        protocol = "darts"
    if protocol == "nb201":
        fname, key, source = NB201_SPLITS[data.name]
        if source == "train":
            x, y = data.train_x, data.train_y
            train_idx, valid_idx = read_split_file(fname, "train"), read_split_file(fname, key)
        else:  # search-train = whole train set, search-valid = half of the test set
            x, y = torch.cat([data.train_x, data.test_x]), torch.cat([data.train_y, data.test_y])
            train_idx = torch.arange(len(data.train_x))
            valid_idx = read_split_file(fname, key) + len(data.train_x)
        if int(max(train_idx.max(), valid_idx.max())) >= len(x):
            raise UserError(f"{data.name} has {len(x)} images but the NB201 split file {fname} indexes more; "
                            "is the dataset complete?")
    elif protocol == "darts":
        x, y = data.train_x, data.train_y
        cut = int(train_portion * len(x))
        train_idx, valid_idx = torch.arange(cut), torch.arange(cut, len(x))
    else:
        raise UserError(f"unknown dataset.split '{split}'; choose auto, nb201 or darts")
    if mean is None or std is None:
        mean, std = NORMALISATION.get((data.name, protocol), NORMALISATION.get((data.name, "darts"), ([0.5] * 3, [0.25] * 3)))
    augment = Augment(mean, std, crop_pad=crop_pad, flip=flip, cutout=cutout, cutout_prob=cutout_prob)
    stream = SearchStream(x, y, train_idx, valid_idx, batch_size, augment, protocol, seed, device, train_draw)
    stream.valid_from_test = protocol == "nb201" and NB201_SPLITS[data.name][2] != "train"
    return stream, protocol
