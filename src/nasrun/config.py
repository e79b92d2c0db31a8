"""The one place configs become objects (style.md pitfall 7: only trusted ``_target_`` prefixes)."""

import functools
import importlib
import inspect
import math
import re
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .errors import UserError

ALLOWED_PREFIXES = ("nasrun.", "torch.")


def build(node, **runtime):
    """Instantiate ``node`` (dict or DictConfig with ``_target_``), passing runtime objects as kwargs.

    Unknown keys fail (no ``**kwargs`` behind a target), and ``_target_`` must start with an allowed
    prefix so configs read from genotype or checkpoint files cannot import arbitrary code.
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    target = node.get("_target_", "")
    if not target.startswith(ALLOWED_PREFIXES):
        raise UserError(f"refusing _target_ {target!r}: only {ALLOWED_PREFIXES} are allowed")
    try:
        return instantiate(node, **runtime, _convert_="all")
    except Exception as exc:  # hydra wraps TypeError for unknown/missing keys
        cause = exc.__cause__ or exc
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError):
            raise UserError(f"bad config for {target}: {cause}") from None
        raise


CONF_DIR = Path(__file__).resolve().parent / "conf"
GROUPS = ("space", "method", "selector", "stop", "dataset", "trainer", "benchmark", "retrain", "experiment")

# The schema (issue 22 §3). A value's type is the type of its default: the constructor's default for the groups that
# build an object (config keys = constructor arguments), else the YAML defaults of every option of its group and of
# the command's own file; an int is accepted where a float is. Every number must be finite and ≥ 0, counts ≥ 1, and
# the keys below follow their own rules.
COUNTS = {"epochs", "batch_size", "C", "N", "layers", "inner_steps", "lr_epochs", "proj_intv", "discrete_batches",
          "partial_channels", "eval_C", "eval_layers", "n_train", "image_size", "decision_freq"}
FRACTIONS = {"train_portion"}  # strictly between 0 and 1
PROBABILITIES = ("drop", "prob", "momentum")  # a float key whose name contains one of these: between 0 and 1
CHOICES = {"trainer.device": (r"auto|cpu|cuda|cuda:\d+|mps", "auto, cpu, cuda, cuda:N or mps"),
           "trainer.cuda_graphs": (("auto", True, False, "emulate"), "auto, true, false or emulate"),
           "trainer.threads": (("auto", int), "auto or a whole number ≥ 1"),
           "trainer.dtype": (("float32", "float64"), "float32 or float64"),
           "diagnostics.hessian_mode": (("auto", "exact", "power"), "auto, exact or power"),
           "dataset.split": (("auto", "nb201", "darts"), "auto, nb201 or darts"),
           "dataset.train_draw": (("epoch", "fresh"), "epoch or fresh"),
           "mode": (("auto", "benchmark", "retrain"), "auto, benchmark or retrain")}
_TYPES = {bool: "true or false", int: "a whole number", float: "a number", str: "a text value", list: "a list"}


def validate(cfg, command=None):
    """Refuse, in one line naming the key, the value and what is allowed, any value of the wrong type, out of range
    or not among a key's choices, and the combinations no run can use; ``command``: search, eval or select (read from
    ``task_name`` when None)."""
    command = command or cfg.get("task_name") or "search"
    data = OmegaConf.to_container(cfg, resolve=True)
    expected = _expected_types(cfg, command)
    for key, value in _leaves(data):
        if key in CHOICES:
            _check_choice(key, value)
            continue
        kinds = expected.get(key)
        if kinds and value is not None and not any(_is(value, k) for k in kinds):
            kind = next(iter(sorted(kinds, key=lambda k: list(_TYPES).index(k))))
            raise UserError(f"{key}={value!r}: give {_TYPES[kind]}" + (" ≥ 1" if key.rpartition(".")[2] in COUNTS
                                                                        and kind is int else ""))
        _check_range(key, value, kinds or set())
    _check_combinations(cfg)


def _is(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check_choice(key, value):
    allowed, words = CHOICES[key]
    if isinstance(allowed, str):
        ok = isinstance(value, str) and re.fullmatch(allowed, value)
    else:
        ok = any((isinstance(value, int) and not isinstance(value, bool) and value >= 1) if a is int
                 else (value is a if isinstance(a, bool) else value == a and not isinstance(value, bool)) for a in allowed)
    if not ok:
        raise UserError(f"{key}={value!r}: choose {words}")


def _check_range(key, value, kinds):
    leaf = key.rpartition(".")[2]
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            raise UserError(f"{key}={v!r}: must be a finite number")
        low = 1 if leaf in COUNTS else 0
        if v < low:
            raise UserError(f"{key}={v}: must be ≥ {low}")
        if leaf in FRACTIONS and not 0 < v < 1:
            raise UserError(f"{key}={v!r}: give a fraction strictly between 0 and 1")
        if float in kinds and int not in kinds and any(p in leaf for p in PROBABILITIES) and v > 1:
            raise UserError(f"{key}={v}: must be between 0 and 1")


def _check_combinations(cfg):
    classes = OmegaConf.select(cfg, "dataset.synthetic.num_classes", default=None)
    if classes is not None and classes < 2:
        raise UserError(f"dataset.synthetic.num_classes={classes}: a classifier needs at least 2 classes")


def _leaves(data, prefix=""):
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k in ("hydra", "_target_", "defaults"):
            continue
        if isinstance(v, dict):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


@functools.cache
def _yaml_types(command):
    """``{key: {types}}`` from the YAML defaults of the command's file and of every option of every group."""
    out = {}

    def add(data, prefix):
        for key, value in _leaves(data, prefix):
            if value is not None and not (isinstance(value, str) and "${" in value):
                out.setdefault(key, set()).add(list if isinstance(value, list) else type(value))

    add(OmegaConf.to_container(OmegaConf.load(CONF_DIR / f"{command}.yaml")), "")
    for group in GROUPS:
        if group == "experiment":
            continue
        for path in (CONF_DIR / group).glob("*.yaml"):
            add(OmegaConf.to_container(OmegaConf.load(path)), f"{group}.")
    return out


def _expected_types(cfg, command):
    expected = {k: set(v) for k, v in _yaml_types(command).items()}
    for group in ("space", "method", "selector", "stop"):
        node = cfg.get(group)
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        if not target or not str(target).startswith(ALLOWED_PREFIXES):
            continue
        try:
            module, _, name = str(target).rpartition(".")
            params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        except (ImportError, AttributeError, ValueError, TypeError):
            continue
        for pname, param in params.items():
            default = param.default
            if default is inspect.Parameter.empty or default is None:
                continue
            kind = list if isinstance(default, (list, tuple)) else type(default)
            expected[f"{group}.{pname}"] = {kind}  # the constructor's default decides (a YAML null says nothing)
    return expected


def unknown_added_keys(base, overrides):
    """Keys added with ``+key=value`` that the composed config does not have (Hydra accepts them silently):
    ``[(key, closest existing keys)]``. Group choices (``+experiment=...``) and ``hydra.*`` are not keys."""
    import difflib

    out = []
    for arg in overrides:
        if not arg.startswith("+") or "=" not in arg:
            continue
        key = arg.lstrip("+").split("=", 1)[0]
        if key in GROUPS or key.startswith("hydra"):
            continue
        if OmegaConf.select(base, key, default="__missing__", throw_on_missing=False) != "__missing__":
            continue  # it exists: ++key or a redundant +
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        siblings = list(node.keys()) if isinstance(node, DictConfig) else []
        close = difflib.get_close_matches(leaf, siblings, n=len(siblings), cutoff=0.0)
        out.append((key, [f"{parent}.{s}" if parent else s for s in close]))
    return out
