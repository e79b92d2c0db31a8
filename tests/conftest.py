"""Shared fixtures: compose configs the way the CLI does, tiny sizes for 2 CPU cores."""

import os
import pickle
import random

import pytest
import torch
from hydra import compose, initialize_config_dir

from nasrun.cli import CONF_DIR

TINY = ["space.C=4", "space.N=1", "dataset=synthetic", "trainer.epochs=2", "trainer.batch_size=16",
        "trainer.device=cpu", "trainer.progress=false", "benchmark=none", "trainer.threads=2"]


def tiny_space(name):
    """Smallest sizes of a space: one cell per NB201 stage, three DARTS cells (two of them reductions)."""
    return ["space.C=4", "space.N=1"] if name.startswith("nb201") else ["space.C=4", "space.layers=3"]


def make_cfg(overrides=(), config_name="search", tiny=True):
    """Compose ``conf/<config_name>.yaml`` with overrides (tiny sizes first, so later ones win)."""
    overrides = list(overrides)
    space = next((o.split("=", 1)[1] for o in overrides if o.startswith("space=")), "nb201")
    base = tiny_space(space) + TINY[2:] if tiny else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=base + overrides)


def tiny_method(overrides=(), dtype=torch.float32, seed=0, arch_lr=1e-3):
    """A method on a tiny supernet with α away from uniform (so second-order terms are not degenerate)."""
    from nasrun.config import build

    torch.manual_seed(seed)
    cfg = make_cfg(list(overrides))
    space = build(cfg.space)
    sup = space.build_supernet(4).to(dtype)
    method = build(cfg.method, supernet=sup, space=space)
    with torch.no_grad():
        for a in method.arch_parameters():
            a.data = a.data.to(dtype).normal_(0, 0.5)
    method.arch_opt = torch.optim.Adam(method.arch_parameters(), lr=arch_lr)
    return space, sup, method


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    """No benchmark or data from the developer's machine leaks into a test."""
    monkeypatch.delenv("NASRUN_BENCH", raising=False)
    monkeypatch.delenv("NASRUN_DATA", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    torch.set_num_threads(2)


NB201_DATASETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
                  "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test")}


def nb201_results(arch, idx, dataset, seed, accs, params, flops):
    """One trial in the ResultsCount state-dict layout of the NB201 file (200 epochs)."""
    epochs = 200
    evals = {}
    for name in NB201_DATASETS[dataset]:
        for e in range(epochs):
            evals[f"{name}@{e}"] = accs.get(name, 0.0)
    return {"name": dataset, "net_state_dict": None, "train_acc1es": {e: 50.0 for e in range(epochs)},
            "train_acc5es": None, "train_losses": {e: 1.0 for e in range(epochs)}, "train_times": None,
            "arch_config": {"name": "infer.tiny", "channel": 16, "num_cells": 5, "arch_str": arch,
                            "class_num": 10}, "params": params, "flop": flops, "seed": seed, "epochs": epochs,
            "latency": [0.01], "eval_names": list(NB201_DATASETS[dataset]), "eval_acc1es": evals,
            "eval_times": {}, "eval_losses": {k: 1.0 for k in evals}}


def write_nb201_fixture(path, archs, seeds=(777, 888)):
    """A NAS-Bench-201 file in the original format (``torch.save`` of the dict the NB201 API loads).

    Returns ``{arch: {dataset: (valid_mean, test_mean, params, flops)}}`` computed independently.
    """
    rng = random.Random(0)
    meta, arch2infos, truth = list(archs), {}, {}
    for idx, arch in enumerate(meta):
        all_results, dataset_seed, truth[arch] = {}, {}, {}
        for dataset in NB201_DATASETS:
            dataset_seed[dataset] = list(seeds)
            params, flops = rng.uniform(0.07, 1.5), rng.uniform(7, 220)
            per_seed = []
            for seed in seeds:
                accs = {name: rng.uniform(10, 95) for name in NB201_DATASETS[dataset]}
                per_seed.append(accs)
                all_results[(dataset, seed)] = nb201_results(arch, idx, dataset, seed, accs, params, flops)
            truth[arch][dataset] = ({k: sum(a[k] for a in per_seed) / len(seeds) for k in per_seed[0]}, params, flops)
        full = {"arch_index": idx, "arch_str": arch, "all_results": all_results, "dataset_seed": dataset_seed,
                "clear_net_done": True}
        arch2infos[idx] = {"full": full, "less": full}
    torch.save({"meta_archs": meta, "arch2infos": arch2infos, "evaluated_indexes": list(range(len(meta)))}, path)
    return truth


def write_cifar_fixture(root, name="cifar10", n_per_batch=8, n_test=8):
    """CIFAR python-version pickles (torchvision's layout) with random images; returns the arrays."""
    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = "labels" if name == "cifar10" else "fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    out = {}
    for f in files + (["test_batch"] if name == "cifar10" else ["test"]):
        n = n_test if "test" in f else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump({"data": data, key: labels, "batch_label": f}, fh)
        out[f] = (data, labels)
    return out


@pytest.fixture
def chdir_tmp(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)
