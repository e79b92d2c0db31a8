"""P-DARTS's op pruning between stages (chenxin061/pdarts ``train_search.py``): every edge keeps its ``keep``
ops with the largest softmax(α) (the others are dropped for the next, deeper stage). The per-edge op lists go
to ``selection.json``, which the next stage reads with ``space.edge_ops_file``; the genotype returned is the
DARTS rule's on this stage's α, for the record.
"""

import torch.nn.functional as F

from ..errors import UserError


class PruneOps:
    """Keep the strongest ``keep`` ops of every edge.

    Args:
        name: selector name.
        keep: ops per edge for the next stage (P-DARTS: 5 after stage 1, 3 after stage 2).
    """

    reads_alpha = True  # the genotype comes from α (meaningless where α is never trained)

    history_only = False

    def __init__(self, name="prune_ops", keep=5):
        self.name, self.keep = name, keep
        self.decisions = {}

    def check_setup(self, space, method, **_):
        if not hasattr(space, "edge_ops"):
            raise UserError(f"selector=prune_ops prunes per-edge op lists; space {space.name} has none "
                            "(use a DARTS-family space)")
        for key, alpha in method.alphas.items():
            if key not in ("normal", "reduce"):
                raise UserError("selector=prune_ops needs one α per cell type (shared_alpha: true)")
            if self.keep > alpha.shape[-1]:
                raise UserError(f"selector.keep={self.keep} but the edges have only {alpha.shape[-1]} ops")

    def select(self, space, method, **_state):
        self.check_setup(space, method)
        pruned = {}
        for key, alpha in method.alphas.items():
            probs = F.softmax(alpha.detach().float().cpu(), dim=-1)
            ops = space.op_names(key)
            lists = []
            for e, row in enumerate(probs):
                # drop the weakest one at a time, the first of equals first (the reference's get_min_k)
                alive = list(range(len(row)))
                while len(alive) > self.keep:
                    alive.remove(min(alive, key=lambda o: (row[o].item(), o)))
                lists.append([ops[e][o] for o in alive])
            pruned[key] = lists
        self.decisions = pruned
        return [(self.name, space.derive(method.derive_weights()))]
