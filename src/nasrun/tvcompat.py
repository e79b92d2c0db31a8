"""Guarded torchvision import.

PyPI's torchvision wheels are CUDA builds; beside a CPU-only torch their compiled extension fails to
load and ``import torchvision`` raises ``operator torchvision::nms does not exist``
(pytorch/vision#9085). nasrun only needs torchvision's dataset downloaders, so when (and only when)
the extension cannot load we define the two missing operator schemas and import again.
"""

import importlib
import sys

import torch

_MISSING_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib = None


def import_torchvision():
    """Return the torchvision module, patching the missing op schemas if its extension cannot load."""
    global _lib
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    for name in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[name]
    if _lib is None:
        _lib = torch.library.Library("torchvision", "DEF")
        for schema in _MISSING_SCHEMAS.values():
            _lib.define(schema)
    return importlib.import_module("torchvision")
