"""Which presets run the fast path (issue 21 item 6): the fused cells and a captured step, or why not.

The table below is what the code does today, checked by running one step of each preset at tiny width and counting
which cell forward ran; a change of coverage must update it (and the README's list)."""

import pytest
import torch

import nasrun.spaces.darts as darts_space
import nasrun.spaces.nb1shot1 as nb1shot1_space
import nasrun.spaces.nb201 as nb201_space
from nasrun.config import build
from nasrun.graph_emulation import EmulatedBackend
from nasrun.cli import CONF_DIR

from .conftest import make_cfg, tiny_space

PER_OP = {  # preset → why its cells run the per-op forward
    "gdas_nb201": "hard single-path forward (one sampled op per edge)",
}
EAGER = {  # preset → why its step is not captured
    "gdas_nb201": "the sampled op is read on the host",
}
PRESETS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_fast_path_coverage(preset, monkeypatch):
    full = make_cfg([f"+experiment={preset}"], tiny=False)
    tiny = tiny_space(full.space.name)
    k = full.space.get("partial_channels", 1) or 1
    if k > 1:
        tiny = [t if not t.startswith("space.C=") else f"space.C={4 * k}" for t in tiny]
    cfg = make_cfg([f"+experiment={preset}", *tiny, "dataset=synthetic", "trainer.device=cpu"], tiny=False)
    calls = {"fused": 0, "per_op": 0}
    for cls in (nb201_space.SearchCell, darts_space.SearchCell, nb1shot1_space.ChoiceCell):
        for name, kind in (("forward_fused", "fused"), ("forward_reference", "per_op"), ("forward_hard", "per_op")):
            if hasattr(cls, name):
                original = getattr(cls, name)
                monkeypatch.setattr(cls, name, lambda self, *a, _f=original, _k=kind, **k: (
                    calls.__setitem__(_k, calls[_k] + 1), _f(self, *a, **k))[1])
    torch.manual_seed(0)
    space = build(cfg.space)
    supernet = space.build_supernet(4)
    method = build(cfg.method, supernet=supernet, space=space)
    method.use_cuda_graphs(EmulatedBackend())
    epochs = cfg.trainer.epochs
    if hasattr(supernet, "on_epoch_start"):
        supernet.on_epoch_start(0, epochs)
    method.on_epoch_start(0, epochs)
    g = torch.Generator().manual_seed(0)
    size = 32 if cfg.space.get("search_auxiliary") else 8
    batch = [(torch.randn(8, 3, size, size, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    for _ in range(2):  # counted: the second step (SNAS measures its op costs with the per-op cells at the first)
        calls.update(fused=0, per_op=0)
        if hasattr(method, "step_group"):
            method.step_group([tuple(batch)])
        else:
            method.step(*batch)
    per_op = calls["per_op"] > 0
    assert per_op == (preset in PER_OP), (preset, calls)
    assert calls["fused"] > 0 or per_op
    assert method.graphs.enabled == (preset not in EAGER), preset
