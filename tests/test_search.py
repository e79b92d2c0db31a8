"""run_search end to end at tiny size: the run-directory contract, resume, errors (design.md §5-6)."""

import json
import os
import signal

import pytest
import torch

import nasrun.engine as search_mod
from nasrun.benchmarks.nb201 import DATASETS, FORMAT
from nasrun.errors import Interrupted, UserError
from nasrun.search import run_search
from nasrun.spaces import get_space

from .conftest import make_cfg

EPOCH_KEYS = {"epoch", "w_lr", "arch_lr", "train_loss", "train_acc", "valid_loss", "valid_acc", "seconds",
              "images_per_s", "alpha", "genotype", "skip_count", "depth", "benchmark"}


def write_table(path, value=lambda i: 50.0 + i % 40):
    rows = {str(g): [[value(i), value(i) + 1, 0.1, 10.0]] * len(DATASETS)
            for i, g in enumerate(get_space("nb201").all_genotypes())}
    path.write_text(json.dumps({"format": FORMAT, "benchmark": "nb201", "version": 1, "rows": rows}))
    return rows


def final_state(out):
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    return ckpt["method"]["alphas"]["normal"], ckpt["supernet"], json.loads((out / "genotype.json").read_text())


@pytest.mark.parametrize("method", ["darts", "darts_2nd"])
def test_run_directory_contract(tmp_path, method):
    table = tmp_path / "nb201.json"
    rows = write_table(table)
    out = tmp_path / "run"
    summary = run_search(make_cfg([f"method={method}", "benchmark=nb201", f"benchmark.path={table}"]), out)
    for name in ("config.yaml", "env.json", "metrics.jsonl", "genotype.json", "checkpoint.pt", "summary.json"):
        assert (out / name).exists(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [0, 1] and all(EPOCH_KEYS <= set(r) for r in lines)
    assert len(lines[0]["alpha"]["normal"]) == 6 and sum(lines[0]["alpha"]["normal"][0]) == pytest.approx(1, abs=1e-4)
    assert lines[-1]["benchmark"]["test_acc"] == rows[lines[-1]["genotype"]][0][1]
    genotype = json.loads((out / "genotype.json").read_text())
    assert genotype["genotype"] == lines[-1]["genotype"] == summary["genotype"] and genotype["space"] == "nb201"
    assert summary["benchmark"]["cifar100"]["valid_acc"] == rows[summary["genotype"]][1][0]
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "hostname" in env
    assert "method:" in (out / "config.yaml").read_text()


def test_interrupt_and_resume_is_bit_identical(tmp_path, monkeypatch):
    cfg = make_cfg(["trainer.epochs=3", "method=darts_2nd"])
    run_search(cfg, tmp_path / "straight")
    calls = {"n": 0}
    original = search_mod.accumulate

    def signal_at_step_5(*args):
        original(*args)
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch (2 steps per epoch at this size → epoch 2, step 1)
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(search_mod, "accumulate", signal_at_step_5)
    with pytest.raises(Interrupted, match="SIGUSR1"):
        run_search(cfg, tmp_path / "resumed")
    ckpt = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["finished"]) == (2, 1, False)
    monkeypatch.setattr(search_mod, "accumulate", original)
    run_search(cfg, tmp_path / "resumed")
    a1, w1, g1 = final_state(tmp_path / "straight")
    a2, w2, g2 = final_state(tmp_path / "resumed")
    assert torch.equal(a1, a2) and g1 == g2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    m1 = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in m1] == [r["train_loss"] for r in m2]


def test_finished_run_is_idempotent(tmp_path, monkeypatch):
    cfg = make_cfg()
    first = run_search(cfg, tmp_path)
    import nasrun.search

    monkeypatch.setattr(nasrun.search, "build_data", lambda *a: pytest.fail("a finished run must not train again"))
    assert run_search(cfg, tmp_path) == first


def test_resume_with_changed_config_is_refused(tmp_path):
    run_search(make_cfg(), tmp_path)
    with pytest.raises(UserError, match=r"different config \(method.arch_lr: 0.0003 -> 0.1\)"):
        run_search(make_cfg(["method.arch_lr=0.1"]), tmp_path)
    run_search(make_cfg(["trainer.progress=true"]), tmp_path)  # cosmetic keys may change


def test_nan_loss_stops_with_the_epoch(tmp_path):
    run_search(make_cfg(["trainer.epochs=1"]), tmp_path / "ok")
    with pytest.raises(UserError, match=r"NaN/inf in epoch 1"):
        run_search(make_cfg(["dataset.std=[0,0,0]"]), tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_noskip_space_and_track_running_stats(tmp_path):
    summary = run_search(make_cfg(["space=nb201_noskip", "space.track_running_stats=true", "trainer.epochs=1"]), tmp_path)
    assert "skip_connect" not in summary["genotype"]


def test_fixed_thread_count_makes_the_result_independent_of_the_launcher(tmp_path):
    """A launcher (or a user's shell) leaves torch at some thread count; trainer.threads overrides it, so the
    same seed gives the same bits wherever it is launched, and env.json says how many threads ran."""
    finals = []
    for outer in (1, 2):
        torch.set_num_threads(outer)  # what the launching process happened to have
        out = tmp_path / f"outer{outer}"
        run_search(make_cfg(["trainer.threads=2", "trainer.epochs=2"]), out)
        assert json.loads((out / "env.json").read_text())["torch_threads"] == 2
        state = torch.load(out / "checkpoint.pt", weights_only=False)
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        finals.append((state["method"]["alphas"], [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k}
                                                   for r in records]))
    assert all(torch.equal(finals[0][0][k], finals[1][0][k]) for k in finals[0][0]) and finals[0][1] == finals[1][1]
    assert make_cfg([], tiny=False).trainer.threads == 1  # the default is a number, not the machine's core count
    with pytest.raises(UserError, match="trainer.threads=0"):
        run_search(make_cfg(["trainer.threads=0"]), tmp_path / "bad")


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_run_files_respect_the_umask(tmp_path, umask):
    """Issue 15 item 7: checkpoint.pt, env.json, genotype.json, summary.json get the mode any other file would
    (shared lab directories), not mkstemp's 0600."""
    old = os.umask(umask)
    try:
        run_search(make_cfg(["trainer.epochs=1"]), tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "env.json", "genotype.json", "summary.json", "config.yaml", "metrics.jsonl"):
        mode = (tmp_path / "run" / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, (name, oct(mode))
