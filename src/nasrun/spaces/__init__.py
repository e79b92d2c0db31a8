"""Search spaces. ``get_space(name, **overrides)`` builds the space from ``conf/space/<name>.yaml``."""

from pathlib import Path

from omegaconf import OmegaConf

from ..errors import UserError

SPACE_CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "space"


def available_spaces():
    """Names of the spaces that have a config file (the valid ``space=`` choices)."""
    return sorted(p.stem for p in SPACE_CONF_DIR.glob("*.yaml"))


def get_space(name, **overrides):
    """Build a search space by its config name, e.g. ``get_space("nb201", C=8)``.

    Args:
        name: YAML stem under ``conf/space`` (``nb201``, ``nb201_noskip``, ...).
        **overrides: constructor arguments that replace the YAML values.
    """
    path = SPACE_CONF_DIR / f"{name}.yaml"
    if not path.exists():
        raise UserError(f"unknown space '{name}'; choose one of: {', '.join(available_spaces())}")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.update(overrides)
    return build_space(cfg)


def build_space(cfg):
    """Instantiate a space from its config node (a dict or DictConfig with ``_target_``)."""
    from ..config import build

    return build(cfg)
