"""NAS-Bench-201 queries (methods.md §1.4) and the compact table ``nasrun bench convert`` writes.

Reporting convention: CIFAR-10 valid = ``cifar10-valid`` x-valid, test = ``cifar10`` ori-test;
CIFAR-100 and ImageNet16-120 valid/test = x-valid/x-test. Accuracies are the mean over the
benchmark's seeds (``is_random=False``) at the 200-epoch setting (``hp='200'``).
"""

import json
from pathlib import Path

from ..errors import UserError
from . import FORMAT, read_compact
from ..utils import atomic_write_bytes

DATASETS = ("cifar10", "cifar100", "ImageNet16-120")
COLUMNS = ("valid_acc", "test_acc", "params", "flops")
# dataset -> ((dataset key, set) for valid, (dataset key, set) for test)
SETS = {"cifar10": (("cifar10-valid", "x-valid"), ("cifar10", "ori-test")),
        "cifar100": (("cifar100", "x-valid"), ("cifar100", "x-test")),
        "ImageNet16-120": (("ImageNet16-120", "x-valid"), ("ImageNet16-120", "x-test"))}


def rows_from_original(data):
    """Extract ``{arch: [[valid, test, params, flops] per dataset]}`` from the original NB201 dict,
    using the ``nas_201_api`` result classes for the averaging over seeds."""
    try:
        from nas_201_api.api_utils import ArchResults
    except ImportError:
        raise UserError("reading the original NB201 file needs the nas-bench-201 package: pip install nas-bench-201") from None
    for key in ("meta_archs", "arch2infos", "evaluated_indexes"):
        if key not in data:
            raise UserError(f"not a NAS-Bench-201 file: key '{key}' is missing")
    rows = {}
    for idx, info in data["arch2infos"].items():
        res = ArchResults.create_from_state_dict(info["full"])
        row = []
        for ds in DATASETS:
            (vk, vs), (tk, ts) = SETS[ds]
            cost = res.get_compute_costs(ds)
            row.append([float(res.get_metrics(vk, vs)["accuracy"]), float(res.get_metrics(tk, ts)["accuracy"]),
                        float(cost["params"]), float(cost["flops"])])
        rows[data["meta_archs"][int(idx)]] = row
    return rows


class NB201Benchmark:
    """In-memory NB201 table: ``query(arch_str, dataset)``.

    Args:
        rows: ``{arch_str: [[valid_acc, test_acc, params, flops] for each of DATASETS]}``.
        source: where the table came from.
    """

    name = "nb201"
    datasets = DATASETS

    def __init__(self, rows, source=""):
        self.rows, self.source = rows, source

    @classmethod
    def load(cls, path):
        """Load a compact table (JSON) or an original ``NAS-Bench-201-*.pth`` file."""
        path = Path(path)
        rows = read_compact(path, "nb201")
        if rows is not None:
            return cls(rows, str(path))
        import torch

        try:  # the original file is a pickled dict written by torch.save (trusted: the user's own download)
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"benchmark file {path} is corrupt or not a NAS-Bench-201 .pth file ({type(exc).__name__}); "
                            "download it again") from None
        if not isinstance(data, dict):
            raise UserError(f"benchmark file {path} is not a NAS-Bench-201 file (it holds a {type(data).__name__})")
        try:
            return cls(rows_from_original(data), str(path))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise UserError(f"benchmark file {path} is corrupt or not a NAS-Bench-201 file ({exc!r})") from None

    def save(self, path):
        """Write the compact table (only the metrics nasrun reports)."""
        table = {"format": FORMAT, "benchmark": "nb201", "version": 1, "source": Path(self.source).name,
                 "hp": "200", "datasets": list(DATASETS), "columns": list(COLUMNS), "rows": self.rows}
        data = json.dumps(table, separators=(",", ":")).encode()
        atomic_write_bytes(path, lambda f: f.write(data))

    def __len__(self):
        return len(self.rows)

    def query(self, genotype, dataset="cifar10"):
        """``{valid_acc, test_acc, params, flops}`` of an NB201 genotype, or None if it is not in the table."""
        dataset = {"imagenet16_120": "ImageNet16-120"}.get(dataset, dataset)
        if dataset not in DATASETS:
            raise UserError(f"NB201 has no dataset '{dataset}'; choose one of {list(DATASETS)}")
        row = self.rows.get(str(genotype))
        if row is None:
            return None
        return dict(zip(COLUMNS, row[DATASETS.index(dataset)]))
