"""DARTS genotypes: the reference text form (quark0 ``Genotype`` namedtuple), JSON, and published cells.

``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], reduce_concat=...)``
parses and prints bit-compatibly with quark0/darts (``range(2, 6)`` as its search logs print it, or
``[2, 3, 4, 5]`` as its ``genotypes.py`` writes DARTS_V1/V2), so published genotypes paste in.
"""

import ast
import json
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class DartsGenotype:
    """A DARTS-space architecture: two (op, input) pairs per intermediate node for each cell type."""

    normal: tuple
    normal_concat: tuple
    reduce: tuple
    reduce_concat: tuple
    concat_style: str = "range"  # how the concat lists print: "range" → range(2, 6), "list" → [2, 3, 4, 5]

    def _concat(self, c):
        if self.concat_style == "range" and list(c) == list(range(c[0], c[-1] + 1)):
            return f"range({c[0]}, {c[-1] + 1})"
        return "[" + ", ".join(str(i) for i in c) + "]"

    def __str__(self):
        def genes(g):
            return "[" + ", ".join(f"({op!r}, {j})" for op, j in g) + "]"

        return (f"Genotype(normal={genes(self.normal)}, normal_concat={self._concat(self.normal_concat)}, "
                f"reduce={genes(self.reduce)}, reduce_concat={self._concat(self.reduce_concat)})")

    def to_json(self):
        return json.dumps({"normal": [list(g) for g in self.normal], "normal_concat": list(self.normal_concat),
                           "reduce": [list(g) for g in self.reduce], "reduce_concat": list(self.reduce_concat)})

    def cells(self):
        """``{"normal": genes, "reduce": genes}``."""
        return {"normal": self.normal, "reduce": self.reduce}


@dataclass(frozen=True)
class DeepGenotype:
    """Per-cell genotypes of a space whose cells each have their own α (Amended-DARTS ``amended_deep``)."""

    cells_genes: tuple
    concat: tuple = (2, 3, 4, 5)

    def __str__(self):
        cells = ", ".join("[" + ", ".join(f"({op!r}, {j})" for op, j in g) + "]" for g in self.cells_genes)
        return f"DeepGenotype(cells=[{cells}], concat=range({self.concat[0]}, {self.concat[-1] + 1}))"

    def cells(self):
        return {f"cell{i}": g for i, g in enumerate(self.cells_genes)}


def _literal(node, what):
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range":
        args = [ast.literal_eval(a) for a in node.args]
        return tuple(range(*args)), "range"
    try:
        return ast.literal_eval(node), "list"
    except ValueError:
        raise UserError(f"malformed DARTS genotype: {what} is not a literal list") from None


def _genes(value, what):
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(g, (list, tuple)) and len(g) == 2 and isinstance(g[0], str) and isinstance(g[1], int) for g in value):
        raise UserError(f"malformed DARTS genotype: {what} must be a list of (op, input) pairs")
    return tuple((op, int(j)) for op, j in value)


def parse_darts_text(text):
    """Parse ``Genotype(...)``, ``DeepGenotype(...)`` or the JSON form; no code is executed."""
    text = text.strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"genotype JSON is malformed: {exc}") from None
        if "genotype" in d:
            return parse_darts_text(str(d["genotype"]))
        if "cells" in d:
            return DeepGenotype(tuple(_genes(g, f"cell {i}") for i, g in enumerate(d["cells"])))
        try:
            return DartsGenotype(_genes(d["normal"], "normal"), tuple(d["normal_concat"]), _genes(d["reduce"], "reduce"),
                                 tuple(d["reduce_concat"]), "list")
        except KeyError as exc:
            raise UserError(f"genotype JSON lacks {exc}") from None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise UserError(f"malformed DARTS genotype at column {exc.offset}: {exc.msg}") from None
    if not isinstance(tree, ast.Call) or getattr(tree.func, "id", None) not in ("Genotype", "DeepGenotype"):
        raise UserError("a DARTS genotype looks like Genotype(normal=[...], normal_concat=..., reduce=[...], "
                        "reduce_concat=...), or a published name such as DARTS_V2")
    kw = {k.arg: k.value for k in tree.keywords}
    if tree.func.id == "DeepGenotype":
        cells, _ = _literal(kw.get("cells"), "cells")
        return DeepGenotype(tuple(_genes(g, f"cell {i}") for i, g in enumerate(cells)))
    missing = {"normal", "normal_concat", "reduce", "reduce_concat"} - set(kw)
    if missing:
        raise UserError(f"malformed DARTS genotype: missing {sorted(missing)}")
    normal, _ = _literal(kw["normal"], "normal")
    reduce, _ = _literal(kw["reduce"], "reduce")
    normal_concat, style = _literal(kw["normal_concat"], "normal_concat")
    reduce_concat, _ = _literal(kw["reduce_concat"], "reduce_concat")
    return DartsGenotype(_genes(normal, "normal"), tuple(normal_concat), _genes(reduce, "reduce"), tuple(reduce_concat),
                         style)


def _g(normal, reduce, style="range"):
    return DartsGenotype(tuple(normal), (2, 3, 4, 5), tuple(reduce), (2, 3, 4, 5), style)


# Published cells, as in quark0/darts `genotypes.py` (DARTS, PC-DARTS, P-DARTS) and xiangning-chen/DrNAS.
NAMED = {
    "DARTS_V1": _g([("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                    ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
                   [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                    ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)], "list"),
    "DARTS_V2": _g([("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                    ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
                   [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                    ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)], "list"),
    "PC_DARTS": _g([("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
                    ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
                   [("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
                    ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]),
    "PDARTS": _g([("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                  ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)],
                 [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                  ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)]),
    "DrNAS": _g([("sep_conv_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2),
                 ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2), ("dil_conv_5x5", 3)],
                [("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2), ("sep_conv_5x5", 1),
                 ("sep_conv_5x5", 1), ("dil_conv_5x5", 3), ("skip_connect", 4), ("sep_conv_5x5", 1)]),
}
# DARTS-PT (ruocwang/darts-pt sota/cnn/genotypes.py), DARTS space: darts_pt_* project a DARTS supernet,
# blank_pt_* a fixed-α supernet. The repository annotates each with its parameter size in M (checked in tests).
_PT = {
    "darts_pt_s5_0": ("sep_conv_3x3 0 sep_conv_3x3 1 sep_conv_5x5 0 dil_conv_3x3 1 skip_connect 0 skip_connect 2 skip_connect 0 "
                      "max_pool_3x3 4", "sep_conv_3x3 0 avg_pool_3x3 1 dil_conv_5x5 1 dil_conv_3x3 2 avg_pool_3x3 0 "
                      "max_pool_3x3 2 sep_conv_3x3 2 skip_connect 4"),
    "darts_pt_s5_1": ("sep_conv_3x3 0 sep_conv_3x3 1 sep_conv_3x3 0 dil_conv_3x3 1 max_pool_3x3 0 skip_connect 2 skip_connect 0 "
                      "dil_conv_3x3 4", "dil_conv_5x5 0 avg_pool_3x3 1 max_pool_3x3 0 sep_conv_5x5 2 max_pool_3x3 1 "
                      "dil_conv_3x3 3 sep_conv_5x5 0 sep_conv_3x3 4"),
    "darts_pt_s5_2": ("skip_connect 0 sep_conv_3x3 1 sep_conv_3x3 0 dil_conv_3x3 1 skip_connect 2 dil_conv_3x3 3 max_pool_3x3 1 "
                      "skip_connect 2", "avg_pool_3x3 0 max_pool_3x3 1 avg_pool_3x3 0 sep_conv_3x3 1 dil_conv_5x5 2 "
                      "skip_connect 3 sep_conv_3x3 2 sep_conv_5x5 4"),
    "darts_pt_s5_3": ("sep_conv_3x3 0 sep_conv_3x3 1 sep_conv_3x3 0 sep_conv_3x3 1 skip_connect 0 skip_connect 2 sep_conv_3x3 1 "
                      "skip_connect 3", "avg_pool_3x3 0 sep_conv_5x5 1 max_pool_3x3 1 skip_connect 2 dil_conv_5x5 1 "
                      "max_pool_3x3 3 sep_conv_5x5 2 skip_connect 3"),
    "blank_pt_s5_0": ("sep_conv_3x3 0 sep_conv_5x5 1 sep_conv_3x3 0 sep_conv_3x3 1 avg_pool_3x3 1 skip_connect 3 max_pool_3x3 0 "
                      "avg_pool_3x3 2", "skip_connect 0 sep_conv_5x5 1 dil_conv_3x3 1 sep_conv_5x5 2 max_pool_3x3 0 "
                      "skip_connect 3 max_pool_3x3 0 max_pool_3x3 2"),
    "blank_pt_s5_1": ("avg_pool_3x3 0 avg_pool_3x3 1 sep_conv_3x3 0 max_pool_3x3 2 skip_connect 2 sep_conv_3x3 3 sep_conv_5x5 0 "
                      "sep_conv_5x5 1", "max_pool_3x3 0 dil_conv_5x5 1 sep_conv_3x3 0 skip_connect 1 avg_pool_3x3 2 "
                      "max_pool_3x3 3 sep_conv_5x5 3 sep_conv_5x5 4"),
    "blank_pt_s5_2": ("avg_pool_3x3 0 dil_conv_3x3 1 sep_conv_5x5 0 max_pool_3x3 1 max_pool_3x3 0 skip_connect 1 sep_conv_5x5 1 "
                      "avg_pool_3x3 2", "sep_conv_3x3 0 avg_pool_3x3 1 avg_pool_3x3 0 sep_conv_5x5 1 max_pool_3x3 0 "
                      "sep_conv_5x5 3 max_pool_3x3 2 dil_conv_5x5 4"),
    "blank_pt_s5_3": ("sep_conv_3x3 0 sep_conv_3x3 1 sep_conv_3x3 0 skip_connect 1 max_pool_3x3 2 sep_conv_3x3 3 avg_pool_3x3 0 "
                      "sep_conv_5x5 1", "dil_conv_5x5 0 sep_conv_5x5 1 sep_conv_5x5 0 dil_conv_3x3 1 avg_pool_3x3 1 "
                      "skip_connect 2 max_pool_3x3 0 skip_connect 4"),
}


def _pairs(text):
    words = text.split()
    return [(words[i], int(words[i + 1])) for i in range(0, len(words), 2)]


NAMED.update({name: _g(_pairs(n), _pairs(r)) for name, (n, r) in _PT.items()})
NAMED["PC_DARTS_cifar"] = NAMED["PC_DARTS"]
NAMED["DrNAS_cifar10"] = NAMED["DrNAS"]
