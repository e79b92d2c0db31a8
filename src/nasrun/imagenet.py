"""ImageNet from the standard folder layout, streamed by worker processes (retraining; issue 24).

``<root>/imagenet/train/<class>/*.JPEG`` and ``<root>/imagenet/val/<class>/*.JPEG`` (the validation images sorted
into class folders, as torchvision's ``ImageFolder`` and every DARTS reference read them). The training transform is
quark0's ``train_imagenet.py``: RandomResizedCrop(224), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.2), normalise;
the test transform Resize(256), CenterCrop(224). Images are decoded by ``dataset.workers`` loader processes.

An epoch is a pure function of (seed, epoch), as for the in-memory datasets: the order of the images and one seed
per image (its crop, flip and jitter are drawn from a generator seeded with it, in whichever worker decodes it) are
drawn at :meth:`FolderStream.start_epoch`, so a resume mid-epoch, any number of workers, and a split of every global
batch over several ranks (:func:`nasrun.distributed.shard`) all see the same images with the same augmentation.
"""


import torch

from .distributed import check_batch, shard
from .errors import UserError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class FolderData:
    """File lists of a class-folder dataset: ``train`` and ``test`` as ``(paths, labels)``; ``classes`` sorted."""

    def __init__(self, name, root):
        base = root / name
        train, val = base / "train", base / "val"
        if not train.is_dir() or not val.is_dir():
            raise UserError(f"{name} not found at {base}: put the training images in {train}/<class>/ and the validation "
                            f"images in {val}/<class>/ (the ImageFolder layout; or set dataset.root=DIR / $NASRUN_DATA)")
        self.name = name
        self.classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        if not self.classes:
            raise UserError(f"{train} has no class folders; put each class's images in {train}/<class>/")
        self.train, self.test = self._scan(train), self._scan(val)
        self.num_classes = len(self.classes)

    def _scan(self, folder):
        paths, labels = [], []
        for label, cls in enumerate(self.classes):
            files = sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in EXTENSIONS) \
                if (folder / cls).is_dir() else []
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise UserError(f"{folder} holds no images of the {len(self.classes)} classes of "
                            f"{folder.parent / 'train'}; every split needs <class>/*.JPEG folders")
        return paths, torch.tensor(labels, dtype=torch.int64)


def transforms(crop, resize, jitter):
    """``(train, test)`` torchvision transforms (quark0 ``train_imagenet.py``), ending in normalised tensors."""
    from .tvcompat import import_torchvision

    T = import_torchvision().transforms
    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train = [T.RandomResizedCrop(crop), T.RandomHorizontalFlip()]
    if jitter:
        train.append(T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2))
    return T.Compose(train + norm), T.Compose([T.Resize(resize), T.CenterCrop(crop)] + norm)


class _Images(torch.utils.data.Dataset):
    """Decoded, transformed images by ``(index, seed)``; the transform draws from torch's generator seeded with
    ``seed`` (restored afterwards), so the result does not depend on the worker."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        from PIL import Image

        index, seed = key
        with Image.open(self.paths[index]) as img:
            img = img.convert("RGB")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            x = self.transform(img)
        return x, self.labels[index]


class FolderStream:
    """Training batches of a :class:`FolderData`, with the interface of :class:`nasrun.data.SearchStream` that the
    epoch loop uses (``steps``, ``batch_size``, ``start_epoch``, ``batch``; no valid split)."""

    valid_idx = None

    def __init__(self, data, batch_size, seed, device, workers, transform):
        check_batch("retrain.batch_size", batch_size)
        paths, self.labels = data.train
        if len(paths) < batch_size:
            raise UserError(f"retrain.batch_size={batch_size} is larger than the {len(paths)} training images")
        self.images = _Images(paths, self.labels, transform)
        self.batch_size, self.seed, self.device, self.workers = batch_size, seed, device, workers
        self.steps = -(-len(paths) // batch_size)
        self.plan, self._iter, self._next = None, None, None

    def start_epoch(self, epoch):
        """Draw the epoch's order and per-image seeds from (seed, epoch); this rank keeps its rows of every batch."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n, bs = len(self.images), self.batch_size
        order = torch.randperm(n, generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
        pairs = list(zip(order, seeds))
        self.plan = [shard(pairs[s * bs:(s + 1) * bs]) for s in range(self.steps)]
        self._iter, self._next = None, None

    def batch(self, step):
        if self._iter is None or step != self._next:  # a fresh epoch, or a resume mid-epoch
            loader = torch.utils.data.DataLoader(self.images, batch_sampler=self.plan[step:], num_workers=self.workers,
                                                 pin_memory=self.device.type == "cuda")
            self._iter = iter(loader)
        x, y = next(self._iter)
        self._next = step + 1
        return (x.to(self.device, torch.get_default_dtype(), non_blocking=True), y.to(self.device, non_blocking=True)), None


def eval_batches(data, transform, device, workers, batch_size=256):
    """The test split in order, transformed (``(x, y)`` on ``device``)."""
    paths, labels = data.test
    images = _Images(paths, labels, transform)
    keys = [(i, 0) for i in range(len(paths))]
    sampler = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    for x, y in torch.utils.data.DataLoader(images, batch_sampler=sampler, num_workers=workers,
                                            pin_memory=device.type == "cuda"):
        yield x.to(device, torch.get_default_dtype(), non_blocking=True), y.to(device, non_blocking=True)
