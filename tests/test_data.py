"""Datasets in their real file formats, split protocols and on-device augmentation (methods.md §2)."""

import pickle

import numpy as np
import pytest
import torch

from nasrun.data import (NORMALISATION, Augment, ImageData, build_search_stream, load_dataset, read_split_file)
from nasrun.errors import UserError

from .conftest import write_cifar_fixture

STREAM_ARGS = dict(batch_size=4, seed=0, device=torch.device("cpu"), crop_pad=0, flip=False, cutout=0,
                   cutout_prob=1.0, train_portion=0.5)


def test_cifar_reader_matches_pickles(tmp_path):
    arrays = write_cifar_fixture(tmp_path)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.train_x.shape == (40, 3, 32, 32) and data.test_x.shape == (8, 3, 32, 32)
    raw, labels = arrays["data_batch_2"]
    assert torch.equal(data.train_x[8:16], torch.from_numpy(raw.reshape(-1, 3, 32, 32)))
    assert data.train_y[8:16].tolist() == labels and data.num_classes == 10


def test_cifar100_reader(tmp_path):
    write_cifar_fixture(tmp_path, "cifar100")
    data = load_dataset("cifar100", tmp_path, download=False)
    assert data.num_classes == 100 and len(data.train_x) == 8


def test_missing_dataset_offline_says_where(tmp_path):
    with pytest.raises(UserError, match=r"cifar10 not found at .*cifar-10-batches-py.*dataset.root"):
        load_dataset("cifar10", tmp_path, download=False)


def test_imagenet16_label_filter(tmp_path):
    base = tmp_path / "ImageNet16"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        labels = rng.integers(1, 1001, 50).tolist() + [1, 120, 121]
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (53, 768), dtype=np.uint8), "labels": labels}, f)
    data = load_dataset("imagenet16_120", tmp_path, download=False)
    assert data.train_x.shape[1:] == (3, 16, 16)
    assert int(data.train_y.min()) == 0 and int(data.train_y.max()) == 119
    assert (data.test_y == 119).any() and data.num_classes == 120


def test_svhn_reader(tmp_path):
    from scipy.io import savemat

    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": np.zeros((32, 32, 3, 5), np.uint8),
                                                  "y": np.array([[10], [1], [2], [10], [9]], np.uint8)})
    data = load_dataset("svhn", tmp_path, download=False)
    assert data.train_x.shape == (5, 3, 32, 32) and data.train_y.tolist() == [0, 1, 2, 0, 9]


def test_digits_offline():
    data = load_dataset("digits")
    assert data.train_x.dtype == torch.uint8 and data.train_x.shape == (1437, 3, 8, 8) and len(data.test_x) == 360


def test_nb201_split_files():
    train, valid = read_split_file("cifar-split.txt", "train"), read_split_file("cifar-split.txt", "valid")
    assert len(train) == len(valid) == 25000 and not set(train.tolist()) & set(valid.tolist())
    assert len(read_split_file("cifar100-test-split.txt", "xvalid")) == 5000
    assert len(read_split_file("imagenet-16-120-test-split.txt", "xvalid")) == 3000


def fake(name, n_train, n_test, size=2):
    return ImageData(name, torch.zeros(n_train, 3, size, size, dtype=torch.uint8), torch.arange(n_train) % 10,
                     torch.zeros(n_test, 3, size, size, dtype=torch.uint8), torch.arange(n_test) % 10, 10)


def test_nb201_protocol_cifar10_uses_official_halves():
    stream, protocol = build_search_stream(fake("cifar10", 50000, 10000), "auto", "nb201", **STREAM_ARGS)
    assert protocol == "nb201"
    assert torch.equal(stream.train_idx, read_split_file("cifar-split.txt", "train"))
    assert torch.equal(stream.valid_idx, read_split_file("cifar-split.txt", "valid"))
    assert stream.steps == 6250


def test_nb201_protocol_cifar100_valid_is_half_the_test_set():
    stream, _ = build_search_stream(fake("cifar100", 50000, 10000), "auto", "nb201", **STREAM_ARGS)
    assert len(stream.train_idx) == 50000
    assert torch.equal(stream.valid_idx - 50000, read_split_file("cifar100-test-split.txt", "xvalid"))


def test_nb201_split_on_incomplete_dataset_is_a_clear_error():
    with pytest.raises(UserError, match="split file cifar-split.txt indexes more"):
        build_search_stream(fake("cifar10", 100, 10), "auto", "nb201", **STREAM_ARGS)


def test_darts_protocol_halves_and_fallback():
    stream, protocol = build_search_stream(fake("digits", 101, 10), "auto", "nb201", **STREAM_ARGS)
    assert protocol == "darts"
    assert stream.train_idx.tolist() == list(range(50)) and stream.valid_idx.tolist() == list(range(50, 101))
    with pytest.raises(UserError, match="no official NB201 split"):
        build_search_stream(fake("digits", 10, 10), "nb201", "nb201", **STREAM_ARGS)


def test_protocol_normalisation_constants():
    _, protocol = build_search_stream(fake("cifar10", 50000, 10), "auto", "darts", **STREAM_ARGS)
    assert protocol == "darts"
    assert NORMALISATION[("cifar10", "nb201")][0][0] == pytest.approx(125.3 / 255)


def test_augment_crop_flip_cutout_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    aug = Augment([0.5] * 3, [0.25] * 3, crop_pad=2, flip=True, cutout=4, cutout_prob=0.5)
    params = aug.draw(6, 8, g)
    out = aug(x, params)
    for i in range(6):
        img = torch.nn.functional.pad(x[i].float(), (2, 2, 2, 2))
        oy, ox = params["offset"][i].tolist()
        img = img[:, oy:oy + 8, ox:ox + 8]
        if params["flip"][i]:
            img = img.flip(2)
        img = (img / 255 - 0.5) / 0.25
        if params["apply"][i]:
            cy, cx = params["centre"][i].tolist()
            img[:, max(cy - 2, 0):cy + 2, max(cx - 2, 0):cx + 2] = 0
        assert torch.allclose(out[i], img, atol=1e-6)


def test_stream_is_deterministic_per_epoch_and_resumable():
    data = fake("digits", 40, 4, size=4)
    data.train_x = torch.randint(0, 256, data.train_x.shape, dtype=torch.uint8)
    args = dict(STREAM_ARGS, crop_pad=1, flip=True)
    s1, _ = build_search_stream(data, "darts", "darts", **args)
    s2, _ = build_search_stream(data, "darts", "darts", **args)
    s1.start_epoch(3)
    first = [s1.batch(k) for k in range(2)]
    rest = [s1.batch(k) for k in range(2, s1.steps)]
    s2.start_epoch(3)  # a fresh process resuming at step 2 of epoch 3 (what EpochLoop.resume does)
    resumed = [s2.batch(k) for k in range(2, s2.steps)]
    for (a, b), (c, d) in zip(rest, resumed):
        assert torch.equal(a[0], c[0]) and torch.equal(b[1], d[1])
    s2.start_epoch(3)
    assert torch.equal(s2.batch(0)[0][0], first[0][0][0])
    s2.start_epoch(4)
    assert not torch.equal(s2.batch(0)[0][0], first[0][0][0])


def test_failed_download_reason_is_in_the_error(tmp_path, monkeypatch):
    import nasrun.tvcompat

    def offline():
        raise OSError("no route to host")

    monkeypatch.setattr(nasrun.tvcompat, "import_torchvision", offline)
    with pytest.raises(UserError, match=r"download failed \(OSError: no route to host\)"):
        load_dataset("cifar10", tmp_path, download=True)
    with pytest.raises(UserError, match=r"downloading is off"):
        load_dataset("svhn", tmp_path, download=False)


def test_epoch_tables_equal_step_by_step_draws():
    """The epoch's draws made up front equal drawing them step by step from the (seed, epoch) generator
    (the order the reference loop and older nasrun checkpoints use)."""
    data = fake("digits", 40, 4, size=4)
    data.train_x = torch.randint(0, 256, data.train_x.shape, dtype=torch.uint8)
    for pairing in ("darts", "nb201"):
        stream, _ = build_search_stream(data, "darts", "darts", **dict(STREAM_ARGS, crop_pad=1, flip=True, cutout=2))
        stream.pairing = pairing
        stream.start_epoch(2)
        gen = torch.Generator().manual_seed(stream.seed * 100_003 + 2)
        perm = stream.train_idx[torch.randperm(len(stream.train_idx), generator=gen)]
        bs, nv = stream.batch_size, len(stream.valid_idx)
        for step in range(stream.steps):
            t = perm[step * bs:(step + 1) * bs]
            v = stream.valid_idx[torch.randint(0, nv, (len(t),), generator=gen) if pairing == "nb201"
                                 else torch.randperm(nv, generator=gen)[:bs]]
            pt, pv = stream.augment.draw(len(t), 4, gen), stream.augment.draw(len(v), 4, gen)
            (xt, yt), (xv, yv) = stream.batch(step)
            assert torch.equal(xt, stream.augment(data.train_x[t], pt)) and torch.equal(yt, data.train_y[t])
            assert torch.equal(xv, stream.augment(data.train_x[v], pv)) and torch.equal(yv, data.train_y[v])


def test_fresh_train_draw_takes_an_independent_random_batch_each_step():
    """darts-pt's ``next(iter(train_queue))``: each step's batch is the head of a new permutation of search-train,
    so a batch has no repeats but an epoch may (``epoch`` walks one permutation)."""
    data = fake("digits", 80, 4)
    data.train_y = torch.arange(80)
    seen = {}
    for draw in ("epoch", "fresh"):
        stream, _ = build_search_stream(data, "darts", "darts", **dict(STREAM_ARGS, train_draw=draw))
        stream.start_epoch(0)
        batches = [stream.batch(s)[0][1] for s in range(stream.steps)]
        assert stream.steps == 10 and all(len(set(b.tolist())) == 4 and b.max() < 40 for b in batches)
        seen[draw] = torch.cat(batches).tolist()
    assert sorted(seen["epoch"]) == list(range(40))
    assert len(set(seen["fresh"])) < 40  # 10 independent batches of 4 out of 40 repeat some images (seeded)
    with pytest.raises(UserError, match="train_draw 'sometimes'"):
        build_search_stream(data, "darts", "darts", **dict(STREAM_ARGS, train_draw="sometimes"))


def test_merge_train_val_refuses_splits_that_validate_on_test_images():
    data = fake("cifar100", 50000, 10000)
    stream, protocol = build_search_stream(data, "nb201", "nb201", **STREAM_ARGS)
    assert protocol == "nb201"
    with pytest.raises(UserError, match="would train on test images"):
        stream.merge_train_val()
    darts, _ = build_search_stream(data, "darts", "nb201", **STREAM_ARGS)
    darts.merge_train_val()
    assert len(darts.train_idx) == 50000 and torch.equal(darts.train_idx, darts.valid_idx)
