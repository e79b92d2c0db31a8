"""The one place configs become objects (style.md pitfall 7: only trusted ``_target_`` prefixes)."""

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


# (dotted key, kind, lower bound): values a run cannot do anything sensible with are refused before it starts
RULES = [("trainer.epochs", int, 1), ("trainer.batch_size", int, 1), ("space.C", int, 1), ("space.N", int, 1),
         ("space.layers", int, 1), ("dataset.cutout", int, 0), ("retrain.epochs", int, 1),
         ("retrain.batch_size", int, 1), ("retrain.cutout", int, 0), ("selector.proj_intv", int, 1),
         ("method.inner_steps", int, 1), ("method.lr_epochs", int, 1), ("diagnostics.discrete_batches", int, 1),
         ("diagnostics.hessian_every", int, 0)]
FRACTIONS = ["dataset.train_portion"]


def validate(cfg):
    """Refuse values no run can use (one line naming the key, what it got and what it needs)."""
    for key, kind, low in RULES:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, kind):
            raise UserError(f"{key}={value!r}: give a whole number ≥ {low}")
        if value < low:
            raise UserError(f"{key}={value}: must be ≥ {low}")
    for key in FRACTIONS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
            raise UserError(f"{key}={value!r}: give a fraction strictly between 0 and 1")


def unknown_added_keys(base, overrides):
    """Keys added with ``+key=value`` that the composed config does not have (Hydra accepts them silently):
    ``[(key, closest existing keys)]``. Group choices (``+experiment=...``) and ``hydra.*`` are not keys."""
    import difflib

    from .cli import GROUPS

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
