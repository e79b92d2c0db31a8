"""Progressive search on a partial-channel supernet (DrNAS, Chen et al., ICLR 2021, §3.3; reference
xiangning-chen/DrNAS ``201-space/train_search_progressive.py``, ``net2wider.py``).

Between two stages the supernet's candidate ops are pruned (the pruned ops are no longer computed) and its
partial channels are widened (K 4 → 2: each mixed op now sees C/2 channels instead of C/4). Widening rebuilds
every search cell at the new width and fills it from the old one, net2wider style: channel j of a grown
dimension copies channel m[j] of the old tensor, m = (0, 1, …, n−1, then uniform draws from 0..n−1). One map
per cell and size, so a conv's output channels and the BN after it stay matched (the reference draws one per
conv; its factorized-reduce BN does not follow its convs, which is not reproduced). As in the reference the
widened function is not the old one: the mixed ops now read twice the channels.
"""

import functools

import torch
from torch import nn

from .ops import FactorizedReduce


class ProgressiveSupernet:
    """Mixin of the supernets: the current partial-channel K is a buffer of the state, so a checkpoint written
    after widening loads into a supernet built at the initial width (it is rebuilt first).

    A supernet using it keeps its cells in ``self.cells`` and defines ``search_cells()``: ``[(index in
    self.cells, cell, α key)]`` of its mixed-op cells, each with ``init_args``, ``partial``, ``active`` and ``ops``
    (the candidate ops of every edge in α-row order).
    """

    def _init_progressive(self, partial):
        self.register_buffer("partial_channels", torch.tensor(int(partial)))

    def graph_key(self):
        """The Python values of the cells that a captured step bakes in: partial-channel K, the ops computed and
        P-DARTS's skip-dropout rate (a change re-captures the step)."""
        return tuple((int(cell.partial), repr(cell.active), getattr(cell, "skip_dropout", None))
                     for _, cell, _ in self.search_cells())

    def set_active_ops(self, masks):
        """Compute only the ops with ``masks[key][e, o]`` True on edge e (None: all ops)."""
        for _, cell, key in self.search_cells():
            cell.set_active(None if masks is None else [row.nonzero().flatten().tolist() for row in masks[key].cpu()])

    def set_partial(self, partial, gen=None):
        """Rebuild every search cell with K = ``partial`` and fill it from the old cell (see the module doc).

        Returns ``{old parameter: (new parameter, resize)}``, ``resize`` mapping any tensor shaped like the old
        parameter (its SGD momentum) to the new shape the same way."""
        remap = {}
        for i, cell, _ in self.search_cells():
            new = type(cell)(**{**cell.init_args, "partial": int(partial)})
            param = next(cell.parameters())
            new.to(device=param.device, dtype=param.dtype)
            if any(p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                   for p in cell.parameters()):
                new.to(memory_format=torch.channels_last)
            remap.update(transfer(cell, new, gen))
            new.train(cell.training)
            new.fused = cell.fused
            new.set_active(cell.active)
            if hasattr(cell, "skip_dropout"):
                new.skip_dropout = cell.skip_dropout
            if getattr(cell, "_compiled_call_impl", None) is not None:
                new.compile()
            self.cells[i] = new
        self.partial_channels.fill_(int(partial))
        return remap

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Rebuild at the checkpoint's K first (checkpoints without it are at the supernet's own K)."""
        if "partial_channels" in state_dict:
            partial = int(state_dict["partial_channels"])
            if partial != int(self.partial_channels):
                self.set_partial(partial, gen=torch.Generator())  # values are overwritten by the load below
        else:
            state_dict = {**state_dict, "partial_channels": self.partial_channels.clone()}
        return nn.Module.load_state_dict(self, state_dict, strict, assign)


def _gather(t, plan):
    for dim, index in plan:
        t = t.index_select(dim, index.to(t.device))
    return t


def transfer(old, new, gen=None):
    """Copy module ``old``'s state into ``new`` (the same module at another width), net2wider style; returns
    ``{old parameter: (new parameter, resize)}``."""
    maps = {}

    def index(a, b):
        if (a, b) not in maps:
            maps[a, b] = torch.cat([torch.arange(min(a, b)), torch.randint(a, (max(b - a, 0),), generator=gen)])
        return maps[a, b]

    reduces = {name for name, m in old.named_modules() if isinstance(m, FactorizedReduce)}
    targets = new.state_dict(keep_vars=True)
    remap = {}
    for name, t in old.state_dict(keep_vars=True).items():
        target, plan = targets[name], []
        for dim, (a, b) in enumerate(zip(t.shape, target.shape)):
            if a == b:
                continue
            owner, _, leaf = name.rpartition(".")[0].rpartition(".")
            if owner in reduces and leaf == "bn":  # the BN over [conv_1 | conv_2]: each half follows its conv
                half = index(a // 2, b // 2)
                plan.append((dim, torch.cat([half, a // 2 + half])))
            else:
                plan.append((dim, index(a, b)))
        resize = functools.partial(_gather, plan=plan)
        with torch.no_grad():
            target.copy_(resize(t.detach()))
        if isinstance(t, nn.Parameter):
            remap[t] = (target, resize)
    return remap
