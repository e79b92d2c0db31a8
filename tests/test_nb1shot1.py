"""NAS-Bench-1Shot1 spaces and the NAS-Bench-101 reader (methods.md §1.5, §8.1).

The fixture TFRecords are written here with an independent bitwise CRC-32C and a hand-rolled protobuf
encoder, in the framing and row layout of ``nasbench_only108.tfrecord``.
"""

import base64
import hashlib
import json
import random
import struct

import numpy as np
import pytest
import torch

from nasrun.benchmarks import load_any
from nasrun.benchmarks.nb101 import NB101Benchmark, crc32c, hash_graph, module_hash, prune, read_tfrecords, spec_hash
from nasrun.config import build
from nasrun.errors import UserError
from nasrun.search import build_search, run_search
from nasrun.spaces.nb1shot1 import NB101Cell, NB1Shot1Space

from .conftest import make_cfg

C3, C1, MP = "conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"


def crc32c_bitwise(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c_bitwise(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_double(num, x):
    return varint(num << 3 | 1) + struct.pack("<d", x)


def pb_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def metrics_pb(evals, params, total_time):
    """ModelMetrics: repeated EvaluationData (1), trainable_parameters (2, varint), total_time (3, double)."""
    msg = b""
    for epoch, seconds, train, valid, test in evals:
        inner = (pb_double(1, epoch) + pb_double(2, seconds) + pb_double(3, train) + pb_double(4, valid) +
                 pb_double(5, test) + pb_bytes(6, b"/tmp/model.ckpt-1"))
        msg += pb_bytes(1, inner)
    return msg + varint(2 << 3) + varint(params) + pb_double(3, total_time)


def nb101_row(h, matrix, ops, valid, test, params, seconds, epochs=108):
    evals = [(0.0, 0.0, 0.1, 0.1, 0.1), (epochs / 2, seconds / 2, 0.5, valid / 2, test / 2),
             (float(epochs), seconds, 0.99, valid, test)]
    adjacency = "".join(str(x) for row in matrix for x in row)
    return json.dumps([h, epochs, adjacency, ",".join(ops),
                       base64.b64encode(metrics_pb(evals, params, 2 * seconds)).decode()]).encode()


def write_tfrecord(path, records):
    with open(path, "wb") as f:
        for data in records:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data)))


def write_nb101_fixture(path, cells, epochs=108):
    """Three repeats per cell (plus a 36-epoch row that must be ignored); returns {hash: expected row}."""
    rng, records, truth = random.Random(0), [], {}
    for matrix, ops in cells:
        h = spec_hash(matrix, ops)
        pm, po = prune(matrix, ops)
        valid = [rng.uniform(0.8, 0.95) for _ in range(3)]
        test = [rng.uniform(0.8, 0.95) for _ in range(3)]
        secs = [rng.uniform(1000, 2000) for _ in range(3)]
        params = rng.randint(100_000, 5_000_000)
        for v, t, s in zip(valid, test, secs):
            records.append(nb101_row(h, pm, po, v, t, params, s, epochs))
        records.append(nb101_row(h, pm, po, 0.1, 0.1, params, 10.0, epochs=36))
        truth[h] = {"valid_acc": 100 * sum(valid) / 3, "test_acc": 100 * sum(test) / 3, "params": params,
                    "training_time": sum(secs) / 3}
    write_tfrecord(path, records)
    return truth


def weights(**rows):
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in rows.items()}


def test_space_sizes_and_architecture_parameters():
    assert [NB1Shot1Space(search_space=s).num_architectures() for s in (1, 2, 3)] == [6240, 29160, 363648]
    assert NB1Shot1Space(search_space=1).alpha_shapes() == {"normal": (4, 3), "output": (1, 5), "input_3": (1, 3),
                                                            "input_4": (1, 4)}
    assert NB1Shot1Space(search_space=2).alpha_shapes() == {"normal": (4, 3), "output": (1, 5), "input_2": (1, 2),
                                                            "input_3": (1, 3), "input_4": (1, 4)}
    s3 = NB1Shot1Space(search_space=3).alpha_shapes()
    assert s3["normal"] == (5, 3) and s3["output"] == (1, 6) and [s3[f"input_{n}"] for n in (2, 3, 4, 5)] == [
        (1, 2), (1, 3), (1, 4), (1, 5)]


def edges(cell):
    return {(r, c) for r, row in enumerate(cell.matrix) for c, x in enumerate(row) if x}


def test_space1_discretisation_with_the_dummy_node():
    space = NB1Shot1Space(search_space=1)
    w = weights(normal=[[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]],
                input_3=[[0.5, 0.1, 0.4]], input_4=[[0.1, 0.4, 0.2, 0.3]], output=[[0.1, 0.1, 0.1, 0.4, 0.3]])
    cell = space.derive(w)
    assert cell.ops == ("input", C3, MP, C1, C3, C1, "output")  # the fifth node is NB101's unused dummy
    # node 2 takes {0, 1} (fixed), node 3 {0, 2}, node 4 {1, 3}, the output (index 6 after the dummy) {3, 4}
    assert edges(cell) == {(0, 1), (0, 2), (1, 2), (0, 3), (2, 3), (1, 4), (3, 4), (3, 6), (4, 6)}
    assert len(cell.matrix) == 7 and not any(cell.matrix[5]) and not any(r[5] for r in cell.matrix)
    assert space.parse_genotype(space.format_genotype(cell)) == cell
    assert space.genotype_stats(cell) == {"skip_count": 0, "depth": 5}  # 0→1→2→3→4→out: 5 edges


def test_space2_loose_ends_are_dropped_and_pruned():
    space = NB1Shot1Space(search_space=2)
    w = weights(normal=[[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]],
                input_2=[[0.2, 0.8]], input_3=[[0.5, 0.3, 0.2]], input_4=[[0.1, 0.2, 0.3, 0.4]],
                output=[[0.3, 0.3, 0.3, 0.05, 0.05]])
    cell = space.derive(w)
    # the output takes {0, 1, 2}; nodes 3 and 4 are not reached from it, so their chosen inputs are dropped
    assert edges(cell) == {(0, 1), (1, 2), (0, 6), (1, 6), (2, 6)}
    pruned, ops = prune(cell.matrix, cell.ops)
    assert ops == ["input", C3, MP, "output"]
    assert pruned == [[0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert spec_hash(cell.matrix, cell.ops) == module_hash(pruned, ops)


def test_space3_has_seven_vertices_without_a_dummy():
    space = NB1Shot1Space(search_space=3)
    w = weights(normal=[[0, 1, 0]] * 5, input_2=[[1.0, 0.0]], input_3=[[0.0, 0.0, 1.0]],
                input_4=[[0.0, 1.0, 0.0, 1.0]], input_5=[[1.0, 0.0, 0.0, 0.0, 1.0]], output=[[0, 0, 0, 0, 1.0, 1.0]])
    cell = space.derive(w)
    assert cell.ops == ("input", C3, C3, C3, C3, C3, "output")
    assert edges(cell) == {(0, 1), (0, 2), (2, 3), (1, 4), (3, 4), (0, 5), (4, 5), (4, 6), (5, 6)}
    k_hot = space.discretise(w)
    assert k_hot["input_4"].tolist() == [[0, 1, 0, 1]] and k_hot["output"].tolist() == [[0, 0, 0, 0, 1, 1]]


def reference_hash(matrix, labels):
    """hash_module written from its definition with numpy (degree tuple, |V| rounds of neighbour hashing)."""
    m = np.asarray(matrix)
    h = [hashlib.md5(str(t).encode("utf-8")).hexdigest()
         for t in zip(m.sum(axis=1).tolist(), m.sum(axis=0).tolist(), labels)]
    for _ in range(len(m)):
        h = [hashlib.md5(("".join(sorted(h[u] for u in np.flatnonzero(m[:, v]))) + "|" +
                          "".join(sorted(h[u] for u in np.flatnonzero(m[v]))) + "|" + h[v]).encode("utf-8")).hexdigest()
             for v in range(len(m))]
    return hashlib.md5(str(sorted(h)).encode("utf-8")).hexdigest()


def test_nb101_hash_matches_its_definition_and_is_isomorphism_invariant():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(3, 9))
        matrix = np.triu(rng.integers(0, 2, (n, n)), 1)
        labels = [-1] + rng.integers(0, 3, n - 2).tolist() + [-2]
        assert hash_graph(matrix.tolist(), labels) == reference_hash(matrix, labels)
        perm = rng.permutation(n)  # relabelled vertices: the same graph
        pm = matrix[np.ix_(np.argsort(perm), np.argsort(perm))]
        pl = [labels[i] for i in np.argsort(perm)]
        assert hash_graph(pm.tolist(), pl) == hash_graph(matrix.tolist(), labels)
    # NB101's graph_util_test counterexample: two non-isomorphic graphs with one hash (property of the algorithm)
    m1 = np.zeros((10, 10), int)
    m2 = np.zeros((10, 10), int)
    for a, b in [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (2, 5), (2, 6), (3, 7), (3, 8), (4, 7), (4, 8)]:
        m1[a, b] = 1
    for a, b in [(0, 1), (0, 2), (0, 3), (0, 4), (1, 5), (1, 6), (2, 6), (2, 7), (3, 7), (3, 8), (4, 5), (4, 8)]:
        m2[a, b] = 1
    m1[5:9, 9] = m2[5:9, 9] = 1
    labels = [-1, 1, 1, 1, 1, 2, 2, 2, 2, -2]
    assert hash_graph(m1.tolist(), labels) == hash_graph(m2.tolist(), labels)
    # the op labels matter: conv3x3 is label 0, conv1x1 1, maxpool 2 (NB101 available_ops order)
    chain = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    assert module_hash(chain, ["input", C3, "output"]) == reference_hash(chain, [-1, 0, -2])
    assert module_hash(chain, ["input", MP, "output"]) == reference_hash(chain, [-1, 2, -2])


def test_crc32c_standard_vectors():
    assert crc32c(b"123456789") == 0xE3069283 == crc32c_bitwise(b"123456789")  # the CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def some_cells():
    space = NB1Shot1Space(search_space=3)
    rng = torch.Generator().manual_seed(1)
    shapes = space.alpha_shapes()
    return [(c.matrix, c.ops) for c in (space.derive({k: torch.rand(*s, generator=rng) for k, s in shapes.items()})
                                        for _ in range(4))]


def test_reader_returns_the_mean_of_the_repeats_and_rejects_corruption(tmp_path):
    cells = some_cells()
    truth = write_nb101_fixture(tmp_path / "nasbench_only108.tfrecord", cells)
    bench = NB101Benchmark.load(tmp_path / "nasbench_only108.tfrecord")
    assert len(bench) == len(truth)
    for matrix, ops in cells:
        got = bench.query(NB101Cell(matrix, ops))
        want = truth[spec_hash(matrix, ops)]
        assert {k: got[k] for k in want} == pytest.approx(want)
    table = load_any(tmp_path / "nasbench_only108.tfrecord")
    table.save(tmp_path / "nb101.json")
    again = load_any(tmp_path / "nb101.json")
    assert again.name == "nb101" and again.rows == bench.rows  # JSON round-trips floats exactly

    data = bytearray((tmp_path / "nasbench_only108.tfrecord").read_bytes())
    data[40] ^= 0xFF  # inside the first record's data
    (tmp_path / "bad.tfrecord").write_bytes(bytes(data))
    with pytest.raises(UserError, match="bad data checksum of record 0"):
        NB101Benchmark.load(tmp_path / "bad.tfrecord")
    (tmp_path / "short.tfrecord").write_bytes(bytes(data[:-7]))
    with pytest.raises(UserError, match="truncated"):
        list(read_tfrecords(tmp_path / "short.tfrecord", verify=False))


@pytest.mark.parametrize("space", ["nb1shot1_s1", "nb1shot1_s2", "nb1shot1_s3"])
@pytest.mark.parametrize("method", ["darts", "tse_darts"])
def test_one_search_epoch_per_space(space, method, tmp_path):
    summary = run_search(make_cfg([f"space={space}", f"method={method}", "trainer.epochs=1"]), tmp_path)
    cell = NB1Shot1Space(search_space=int(space[-1])).parse_genotype(summary["genotype"])
    assert len(cell.matrix) == 7 and summary["skip_count"] == 0 and spec_hash(cell.matrix, cell.ops) is not None
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["op_magnitude"] is not None and record["discrete_valid_acc"] is not None


def test_benchmark_accuracy_per_epoch_and_eval(tmp_path):
    """fixed_alpha keeps α at its initial value, so the derived cell is known before the search runs."""
    from nasrun.evaluate import run_eval

    overrides = ["space=nb1shot1_s2", "method=fixed_alpha", "trainer.epochs=2"]
    cfg = make_cfg(overrides)
    space, *_, method = build_search(cfg, torch.device("cpu"))
    cell = space.derive(method.derive_weights())
    truth = write_nb101_fixture(tmp_path / "nb101.tfrecord", [(cell.matrix, cell.ops)] + some_cells()[:1])
    want = truth[spec_hash(cell.matrix, cell.ops)]
    summary = run_search(make_cfg(overrides + ["benchmark=nb101", f"benchmark.path={tmp_path / 'nb101.tfrecord'}"]),
                         tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["benchmark"]["test_acc"] for r in records] == pytest.approx([want["test_acc"]] * 2)
    assert summary["benchmark"]["cifar10"]["valid_acc"] == pytest.approx(want["valid_acc"])
    ev = run_eval(make_cfg([f"genotype='{space.format_genotype(cell)}'", "space=nb1shot1_s2", "benchmark=nb101",
                            f"benchmark.path={tmp_path / 'nb101.tfrecord'}"], config_name="eval", tiny=False),
                  tmp_path / "eval")
    assert ev["results"]["cifar10"]["test_acc"] == pytest.approx(want["test_acc"])
    assert ev["results"]["cifar10"]["benchmark_params"] == want["params"]
    with pytest.raises(UserError, match="not retrained"):
        run_eval(make_cfg([f"genotype='{space.format_genotype(cell)}'", "space=nb1shot1_s2", "mode=retrain"],
                          config_name="eval", tiny=False), tmp_path / "eval2")


def test_malformed_nb101_genotypes_are_one_line_errors():
    space = build(make_cfg(["space=nb1shot1_s1"]).space)
    with pytest.raises(UserError, match="expected 'op,op"):
        space.parse_genotype("input,output")
    with pytest.raises(UserError, match="upper-triangular"):
        space.parse_genotype("input,conv3x3-bn-relu,output|010/101/000")
    with pytest.raises(UserError, match="ops must be"):
        space.parse_genotype("input,conv5x5,output|010/001/000")
