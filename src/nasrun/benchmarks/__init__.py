"""Tabular benchmarks: ``query(genotype, dataset) -> {valid_acc, test_acc, params, flops}``."""

import json
import os
from pathlib import Path

from ..errors import UserError

FORMAT = "nasrun-bench-table"  # the compact tables `nasrun bench convert` writes

KNOWN_FILES = {"nb201": ["nb201.json", "NAS-Bench-201-v1_1-096897.pth", "NAS-Bench-201-v1_0-e61699.pth"],
               "nb101": ["nb101.json", "nasbench_only108.tfrecord"]}
HOW_TO_GET = {"nb201": "download NAS-Bench-201-v1_1-096897.pth (https://github.com/D-X-Y/NAS-Bench-201), "
                       "then `nasrun bench convert FILE` and pass benchmark.path=FILE.json or set $NASRUN_BENCH",
              "nb101": "download nasbench_only108.tfrecord (https://github.com/google-research/nasbench), "
                       "then `nasrun bench convert FILE` and pass benchmark.path=FILE.json or set $NASRUN_BENCH"}


def find_benchmark_file(kind, path=None):
    """Resolve the benchmark file: ``benchmark.path``, else ``$NASRUN_BENCH`` (a file or a folder),
    else ``$TORCH_HOME`` / ``~/.torch`` (where the NB201 API looks). Returns (path or None, places looked)."""
    looked = []
    if path:
        p = Path(os.path.expanduser(str(path)))
        looked.append(str(p))
        return (p if p.is_file() else None), looked
    folders = []
    env = os.environ.get("NASRUN_BENCH")
    if env:
        p = Path(os.path.expanduser(env))
        if p.is_file():
            if sniff_kind(p) == kind:  # $NASRUN_BENCH may name the other benchmark's file
                return p, [str(p)]
        else:
            folders.append(p)
    folders.append(Path(os.environ.get("TORCH_HOME", os.path.expanduser("~/.torch"))))
    for folder in folders:
        for name in KNOWN_FILES[kind]:
            looked.append(str(folder / name))
            if (folder / name).is_file():
                return folder / name, looked
    return None, looked


def open_benchmark(name, path, space_benchmark):
    """Open the benchmark named by the config.

    ``name="auto"`` uses the space's benchmark if a file is found (and none otherwise); an explicit
    name requires the file and fails with where it looked and how to get it.
    """
    if name == "none":
        return None
    kind = space_benchmark if name == "auto" else name
    if kind is None:
        return None
    if kind not in KNOWN_FILES:
        raise UserError(f"unknown benchmark '{kind}'; choose one of: none, auto, {', '.join(KNOWN_FILES)}")
    if space_benchmark is not None and kind != space_benchmark:
        raise UserError(f"benchmark {kind} does not answer for this space (it uses {space_benchmark}); "
                        f"pass benchmark={space_benchmark} or benchmark=none")
    found, looked = find_benchmark_file(kind, path)
    if found is None:
        if name == "auto" and not path:
            return None
        raise UserError(f"{kind} benchmark file not found (looked at: {', '.join(looked)}); {HOW_TO_GET[kind]}")
    return benchmark_class(kind).load(found)


def benchmark_class(kind):
    """The table class of a benchmark kind (``nb201`` or ``nb101``)."""
    if kind == "nb101":
        from .nb101 import NB101Benchmark

        return NB101Benchmark
    from .nb201 import NB201Benchmark

    return NB201Benchmark


def load_any(path):
    """Open a benchmark file of either kind: a compact table says its kind; ``.pth`` is NB201; anything
    else is read as the NB101 TFRecord."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"benchmark file {path} does not exist")
    return benchmark_class(sniff_kind(path)).load(path)


def _head(path, n):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as exc:
        raise UserError(f"cannot read benchmark file {path}: {exc}") from None


def read_compact(path, kind):
    """The rows of a ``kind`` table written by ``nasrun bench convert``, or None when the file is not JSON
    (an original benchmark file); a corrupt table or one of another kind is a one-line error."""
    if _head(path, 1) != b"{":
        return None
    try:
        table = json.loads(Path(path).read_text())
        assert table.get("format") == FORMAT and table.get("benchmark") == kind
        return table["rows"]
    except (json.JSONDecodeError, AssertionError, KeyError, UnicodeDecodeError):
        raise UserError(f"benchmark file {path} is corrupt or not an {kind} table written by "
                        "`nasrun bench convert`; convert the original file again") from None


def sniff_kind(path):
    """``nb101`` or ``nb201`` from a file's first bytes (compact tables say their kind) or its suffix."""
    head = _head(path, 200)
    if head.startswith(b"{"):
        return "nb101" if b'"benchmark":"nb101"' in head else "nb201"
    return "nb201" if Path(path).suffix == ".pth" else "nb101"
