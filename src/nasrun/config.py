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
