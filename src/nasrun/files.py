"""Reading the files nasrun itself wrote (or a user hands it): every read either returns what the caller needs or
raises a one-line :class:`~nasrun.errors.UserError` naming the file, what is wrong with it, and what to do
(issue 22 §3). Benchmark tables and genotype text have their own checks where they are parsed."""

import json
from pathlib import Path

from .errors import UserError


def _unreadable(path, why, fix):
    return UserError(f"{path} {why}; {fix}")


def read_json(path, fix, kind=dict):
    """The JSON value in ``path``, which must be a ``kind`` (a dict unless told)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise _unreadable(path, "does not exist", fix) from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _unreadable(path, f"is not readable JSON ({type(exc).__name__}: {str(exc).splitlines()[0]})", fix) from None
    if not isinstance(data, kind):
        raise _unreadable(path, f"holds a JSON {type(data).__name__}, not a {kind.__name__}", fix)
    return data


def read_yaml(path, fix, kind="dict"):
    """The YAML file ``path`` as an OmegaConf node, a mapping (``kind="dict"``) or a list (``kind="list"``)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    path = Path(path)
    try:
        node = OmegaConf.load(path)
    except FileNotFoundError:
        raise _unreadable(path, "does not exist", fix) from None
    except Exception as exc:  # noqa: BLE001 - yaml's and OmegaConf's errors alike: the file is unusable
        raise _unreadable(path, f"is not readable YAML ({type(exc).__name__})", fix) from None
    want = DictConfig if kind == "dict" else ListConfig
    if not isinstance(node, want):
        raise _unreadable(path, f"holds no YAML {'mapping' if kind == 'dict' else 'list'}", fix)
    return node


def read_checkpoint(path, needs, fix):
    """The state saved in ``path`` with ``torch.save``: a dict that has every key of ``needs``."""
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise _unreadable(path, "does not exist", fix) from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, unpicklable: the same user error
        raise _unreadable(path, f"is unreadable ({type(exc).__name__})", fix) from None
    if not isinstance(state, dict):
        raise _unreadable(path, f"is not a nasrun checkpoint (it holds a {type(state).__name__})", fix)
    missing = [k for k in needs if k not in state]
    if missing:
        raise _unreadable(path, f"is not a nasrun checkpoint of this kind (no {', '.join(missing)})", fix)
    return state
