"""NB201 queries on fixture files in the original format; the compact table; file errors."""

import os
import time

import pytest

from nasrun.benchmarks import find_benchmark_file, open_benchmark
from nasrun.benchmarks.nb201 import NB201Benchmark
from nasrun.errors import UserError
from nasrun.spaces import get_space

from .conftest import write_nb201_fixture

ARCHS = [str(g) for g in list(get_space("nb201").all_genotypes())[::2000]]


@pytest.fixture
def fixture_file(tmp_path):
    path = tmp_path / "NAS-Bench-201-v1_1-096897.pth"
    truth = write_nb201_fixture(path, ARCHS)
    return path, truth


def check_against_truth(bench, truth):
    for arch, per_ds in truth.items():
        for ds, key_valid, key_test, src_valid, src_test in [
                ("cifar10", "x-valid", "ori-test", "cifar10-valid", "cifar10"),
                ("cifar100", "x-valid", "x-test", "cifar100", "cifar100"),
                ("ImageNet16-120", "x-valid", "x-test", "ImageNet16-120", "ImageNet16-120")]:
            res = bench.query(arch, ds)
            assert res["valid_acc"] == pytest.approx(per_ds[src_valid][0][key_valid])
            assert res["test_acc"] == pytest.approx(per_ds[src_test][0][key_test])
            assert res["params"] == pytest.approx(per_ds[ds][1]) and res["flops"] == pytest.approx(per_ds[ds][2])


def test_original_format_mean_over_seeds(fixture_file):
    path, truth = fixture_file
    check_against_truth(NB201Benchmark.load(path), truth)


def test_convert_round_trip_and_fast_load(fixture_file, tmp_path):
    path, truth = fixture_file
    out = tmp_path / "nb201.json"
    NB201Benchmark.load(path).save(out)
    tic = time.perf_counter()
    table = NB201Benchmark.load(out)
    assert time.perf_counter() - tic < 1.0
    check_against_truth(table, truth)
    absent = "|none~0|+|none~0|none~1|+|none~0|none~1|avg_pool_3x3~2|"
    assert absent not in ARCHS and table.query(absent) is None


def test_missing_file_names_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r"nb201 benchmark file not found \(looked at: .*missing.pth\).*bench convert"):
        open_benchmark("nb201", str(tmp_path / "missing.pth"), "nb201")
    monkeypatch.setenv("NASRUN_BENCH", str(tmp_path))
    with pytest.raises(UserError, match=r"looked at: .*nb201.json"):
        open_benchmark("nb201", None, "nb201")
    assert open_benchmark("auto", None, "nb201") is None  # auto: skip quietly when absent


def test_env_folder_is_searched(fixture_file, monkeypatch):
    path, _ = fixture_file
    monkeypatch.setenv("NASRUN_BENCH", str(path.parent))
    assert find_benchmark_file("nb201")[0] == path
    assert len(open_benchmark("auto", None, "nb201")) == len(ARCHS)


@pytest.mark.parametrize("content", [b"{not json", b"\x80\x02garbage", b'{"format": "other"}'])
def test_corrupt_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "bench.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="corrupt or not"):
        NB201Benchmark.load(path)


def test_truncated_original_is_an_error(fixture_file, tmp_path):
    path, _ = fixture_file
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(UserError, match="corrupt"):
        NB201Benchmark.load(bad)


def test_wrong_benchmark_for_space():
    with pytest.raises(UserError, match="unknown benchmark"):
        open_benchmark("nb999", None, "nb201")
