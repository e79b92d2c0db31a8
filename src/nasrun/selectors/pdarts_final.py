"""P-DARTS's final derivation with at most M skip connections (chenxin061/pdarts ``train_search.py``, last stage).

On the last stage's softmax(α) (``none`` set to zero): every edge takes its strongest op, every node its two
edges with the largest such weight. While the normal cell holds more than ``max_skips`` skip connections, the
weakest chosen skip's weight is set to zero and the ops and edges are chosen again (``delete_min_sk_prob``,
``keep_1_on``, ``keep_2_branches``).
"""

import torch
import torch.nn.functional as F

from ..errors import UserError


class PdartsFinal:
    """The DARTS-rule genotype with at most ``max_skips`` skip connections in the normal cell.

    Args:
        name: selector name.
        max_skips: M (2 in the paper).
    """

    reads_alpha = True  # the genotype comes from α (meaningless where α is never trained)

    history_only = False

    def __init__(self, name="pdarts_final", max_skips=2):
        self.name, self.max_skips = name, max_skips
        self.decisions = []

    def check_setup(self, space, **_):
        if not hasattr(space, "edge_targets") or not isinstance(space.edges[0], tuple):
            raise UserError(f"selector=pdarts_final derives DARTS cells; space {space.name} is not one")

    def select(self, space, method, **_state):
        self.check_setup(space)
        weights = {}
        for key, alpha in method.alphas.items():
            probs = F.softmax(alpha.detach().double().cpu(), dim=-1)
            if method.op_mask is not None:  # a progressive search's pruned ops are out
                probs = probs * method.op_mask[key].cpu()
            ops = space.op_names(key)
            for e in range(len(probs)):
                for o, name in enumerate(ops[e]):
                    if name == "none":
                        probs[e, o] = 0.0
            while True:
                choice, edges = self._choose(space, probs)
                skips = [e for e in edges if ops[e][choice[e]] == "skip_connect"]
                if key != "normal" or len(skips) <= self.max_skips:
                    break
                weakest = min(skips, key=lambda e: (probs[e, choice[e]].item(), e))
                self.decisions.append({"cell": key, "dropped_skip_edge": weakest, "skips": len(skips)})
                probs[weakest, choice[weakest]] = 0.0
            w = torch.zeros(probs.shape)
            for e in edges:
                w[e, choice[e]] = 1.0
            weights[key] = w
        return [(self.name, space.derive(weights))]

    @staticmethod
    def _choose(space, probs):
        """Each edge's strongest op; each node's two edges with the largest weight (later of equals first)."""
        choice = probs.argmax(-1).tolist()
        best = probs.max(-1).values
        targets, edges = space.edge_targets(), []
        for node in sorted(set(targets)):
            rows = [e for e, t in enumerate(targets) if t == node]
            ranked = sorted(rows, key=lambda e: best[e].item())  # ascending, stable: ties keep row order
            edges += ranked[-2:]
        return choice, sorted(edges)
