"""NAS-Bench-101 (Ying et al., ICML 2019) read without TensorFlow, for the NAS-Bench-1Shot1 spaces (methods.md §1.5).

``nasbench_only108.tfrecord`` is a TFRecord file: each record is ``uint64 length, uint32 masked CRC-32C of
the length, data, uint32 masked CRC-32C of the data`` (little endian). The data is a JSON list
``[module_hash, epochs, adjacency bits, "op,op,...", base64(ModelMetrics protobuf)]``, one per training
repeat (three per cell). ModelMetrics (nasbench/lib/model_metrics.proto): ``repeated EvaluationData
evaluation_data = 1; int32 trainable_parameters = 2; double total_time = 3``; EvaluationData: ``double
current_epoch = 1, training_time = 2, train_accuracy = 3, validation_accuracy = 4, test_accuracy = 5;
string checkpoint_path = 6``. The reference reads ``evaluation_data[2]`` (the end of training).

Queries prune the cell and hash it as NB101's ``ModelSpec`` / ``hash_module`` do, then report the mean
over the repeats at 108 epochs of validation and test accuracy (%), the parameters and the training time.
"""

import base64
import hashlib
import json
import struct
from pathlib import Path

from ..errors import UserError
from . import FORMAT, read_compact
from ..utils import atomic_write_bytes

try:  # optional: a C implementation for the 500 MB file
    import google_crc32c
except ImportError:
    google_crc32c = None

COLUMNS = ("valid_acc", "test_acc", "params", "training_time")
AVAILABLE_OPS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")  # NB101 config['available_ops'] order
EPOCHS = 108


def _crc_table():
    poly, table = 0x82F63B78, []  # CRC-32C (Castagnoli), reflected
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data):
    """CRC-32C of ``data`` (``google_crc32c`` when installed, else a table-driven loop)."""
    if google_crc32c is not None:
        return google_crc32c.value(bytes(data))
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TFRecord's masked CRC: rotate right by 15 bits and add 0xa282ead8 (mod 2^32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(path, verify=True):
    """Yield the records of a TFRecord file; a truncated file or a bad checksum is a one-line error."""
    path = Path(path)
    with open(path, "rb") as f:
        index = 0
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise UserError(f"{path} is truncated (record {index} at byte {offset}); download it again")
            length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise UserError(f"{path} is corrupt: bad length checksum of record {index} at byte {offset}; "
                                "download it again")
            (length,) = struct.unpack("<Q", length_bytes)
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                raise UserError(f"{path} is truncated (record {index} at byte {offset}); download it again")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise UserError(f"{path} is corrupt: bad data checksum of record {index} at byte {offset}; "
                                "download it again")
            yield data
            index += 1


def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def decode_fields(buf):
    """Protocol-buffer wire format → ``[(field number, value)]`` (varint, fixed64, bytes, fixed32)."""
    fields, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    if i != len(buf):
        raise ValueError("protobuf message is truncated")
    return fields


def decode_metrics(raw):
    """ModelMetrics bytes → ``{"evaluations": [{current_epoch, training_time, ...}], "params", "total_time"}``."""
    names = {1: "current_epoch", 2: "training_time", 3: "train_accuracy", 4: "validation_accuracy", 5: "test_accuracy"}
    out = {"evaluations": [], "params": None, "total_time": None}
    for number, value in decode_fields(raw):
        if number == 1:
            out["evaluations"].append({names[n]: struct.unpack("<d", v)[0] for n, v in decode_fields(value) if n in names})
        elif number == 2:
            out["params"] = value
        elif number == 3:
            out["total_time"] = struct.unpack("<d", value)[0]
    return out


def parse_record(data):
    """One NB101 record → ``(module_hash, epochs, matrix, ops, metrics)``."""
    module_hash, epochs, raw_adjacency, raw_operations, raw_metrics = json.loads(data.decode("utf-8"))
    ops = raw_operations.split(",")
    n = len(ops)
    if len(raw_adjacency) != n * n:
        raise ValueError(f"adjacency of {len(raw_adjacency)} bits does not match {n} ops")
    matrix = [[int(raw_adjacency[r * n + c]) for c in range(n)] for r in range(n)]
    return module_hash, int(epochs), matrix, ops, decode_metrics(base64.b64decode(raw_metrics))


def prune(matrix, ops):
    """NB101 ``ModelSpec._prune``: drop vertices not on a path from the input (0) to the output (last).

    Returns ``(matrix, ops)``, or ``(None, None)`` when the input does not reach the output."""
    n = len(matrix)
    from_input, frontier = {0}, [0]
    while frontier:
        top = frontier.pop()
        for v in range(top + 1, n):
            if matrix[top][v] and v not in from_input:
                from_input.add(v)
                frontier.append(v)
    from_output, frontier = {n - 1}, [n - 1]
    while frontier:
        top = frontier.pop()
        for v in range(top):
            if matrix[v][top] and v not in from_output:
                from_output.add(v)
                frontier.append(v)
    keep = sorted(from_input & from_output)
    if len(keep) < 2 or keep[0] != 0 or keep[-1] != n - 1:
        return None, None
    return [[matrix[r][c] for c in keep] for r in keep], [ops[i] for i in keep]


def module_hash(matrix, ops):
    """NB101 ``ModelSpec.hash_spec`` of a pruned cell: labels input −1, output −2, others their index in
    :data:`AVAILABLE_OPS`, then :func:`hash_graph`."""
    return hash_graph(matrix, [-1] + [AVAILABLE_OPS.index(op) for op in ops[1:-1]] + [-2])


def hash_graph(matrix, labels):
    """NB101 ``graph_util.hash_module``: an isomorphism-invariant MD5 fingerprint of a labelled digraph.

    Every vertex starts from md5(str((out-degree, in-degree, label))); then, |V| times, each vertex hashes
    its sorted in-neighbour hashes, '|', its sorted out-neighbour hashes, '|', its own hash; the
    fingerprint is md5(str(sorted hashes)).
    """
    n = len(matrix)
    in_deg = [int(sum(matrix[r][c] for r in range(n))) for c in range(n)]
    out_deg = [int(sum(row)) for row in matrix]
    hashes = [hashlib.md5(str((out_deg[v], in_deg[v], labels[v])).encode()).hexdigest() for v in range(n)]
    for _ in range(n):
        hashes = [hashlib.md5(("".join(sorted(hashes[w] for w in range(n) if matrix[w][v])) + "|" +
                               "".join(sorted(hashes[w] for w in range(n) if matrix[v][w])) + "|" +
                               hashes[v]).encode()).hexdigest() for v in range(n)]
    return hashlib.md5(str(sorted(hashes)).encode()).hexdigest()


def spec_hash(matrix, ops):
    """Hash of an (unpruned) cell as NB101 queries it, or None if it is not a valid NB101 spec."""
    pruned, pruned_ops = prune(matrix, ops)
    if pruned is None or sum(map(sum, pruned)) > 9 or len(pruned) > 7:
        return None
    return module_hash(pruned, pruned_ops)


def rows_from_tfrecord(path, epochs=EPOCHS):
    """``{hash: [valid %, test %, params, training seconds]}``: the mean over repeats at ``epochs``."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from ..console import console

    sums = {}
    bar = Progress(TextColumn("reading NAS-Bench-101"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                   console=console, transient=True)
    with bar:
        task = bar.add_task("", total=Path(path).stat().st_size)
        for index, data in enumerate(read_tfrecords(path)):
            _add_row(sums, path, index, data, epochs)
            if index % 1000 == 0:
                bar.update(task, completed=(index + 1) * (len(data) + 16))
    if not sums:
        raise UserError(f"{path} holds no NAS-Bench-101 rows at {epochs} epochs")
    return {h: [100 * v / n, 100 * t / n, p, s / n] for h, (v, t, p, s, n) in sums.items()}


def _add_row(sums, path, index, data, epochs):
    """Add one record's final evaluation to the per-hash sums (rows at other epoch budgets are skipped)."""
    try:
        h, e, _, _, metrics = parse_record(data)
        if e != epochs:
            return
        final = metrics["evaluations"][2]
        values = (final["validation_accuracy"], final["test_accuracy"], final["training_time"])
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: record {index} is not a NAS-Bench-101 row ({exc}); "
                        "is this nasbench_only108.tfrecord?") from None
    entry = sums.setdefault(h, [0.0, 0.0, metrics["params"], 0.0, 0])
    entry[0] += values[0]
    entry[1] += values[1]
    entry[3] += values[2]
    entry[4] += 1


class NB101Benchmark:
    """In-memory NB101 table at 108 epochs: ``query(genotype)`` for NB101 cells (the NB-1Shot1 spaces).

    Args:
        rows: ``{module_hash: [valid_acc %, test_acc %, params, training_time s]}``.
        source: where the table came from.
    """

    name = "nb101"
    datasets = ("cifar10",)

    def __init__(self, rows, source=""):
        self.rows, self.source = rows, source

    @classmethod
    def load(cls, path):
        """Load a compact table (JSON) or the original ``nasbench_only108.tfrecord``."""
        rows = read_compact(path, "nb101")
        return cls(rows if rows is not None else rows_from_tfrecord(path), str(path))

    def save(self, path):
        table = {"format": FORMAT, "benchmark": "nb101", "version": 1, "source": Path(self.source).name,
                 "epochs": EPOCHS, "datasets": list(self.datasets), "columns": list(COLUMNS), "rows": self.rows}
        data = json.dumps(table, separators=(",", ":")).encode()
        atomic_write_bytes(path, lambda f: f.write(data))

    def __len__(self):
        return len(self.rows)

    def query(self, genotype, dataset="cifar10"):
        """``{valid_acc, test_acc, params, training_time}`` of an NB101 cell (mean of its repeats), or None."""
        if dataset != "cifar10":
            raise UserError(f"NAS-Bench-101 has only cifar10, not '{dataset}'")
        h = spec_hash(genotype.matrix, genotype.ops)
        row = self.rows.get(h) if h is not None else None
        return None if row is None else {**dict(zip(COLUMNS, row)), "hash": h}
