"""Ranking random architectures on the shared weights (RSPS's selection; AutoDL ``search_find_best``).

``samples`` architectures are drawn uniformly from the space; each is scored by the supernet's accuracy
(eval mode) on its own batch of ``batch_size`` valid images (clean, from a shuffled pass over the valid
split, restarted when it runs out), and the best one is kept.
"""

import torch

from ..console import console
from ..errors import UserError


class RandomRanking:
    """Best of ``samples`` random architectures by one-batch valid accuracy on the supernet.

    Args:
        name: selector name.
        samples: architectures to rank (100).
        batch_size: valid images per architecture (512).
    """

    history_only = False

    def __init__(self, name="random_ranking", samples=100, batch_size=512):
        self.name, self.samples, self.batch_size = name, samples, batch_size
        self.decisions = []

    def check_setup(self, space, method=None, **_):
        if getattr(method, "stages", None):
            raise UserError(f"selector={self.name} samples every op of the space, but method.stage_keep prunes ops "
                            "during the search (their weights are not trained); use selector=argmax or pt")
        if not hasattr(space, "sample_architecture"):
            raise UserError(f"selector={self.name} samples architectures uniformly; space {space.name} cannot")
        space.sample_architecture(torch.Generator())  # a space that cannot sample says why

    @torch.no_grad()
    def select(self, space, method, stream, **_state):
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ())))
        was_training = method.supernet.training
        method.supernet.eval()
        batches = self._batches(stream, gen)
        best = None
        for i in range(self.samples):
            weights = {k: w.to(stream.device) for k, w in space.sample_architecture(gen).items()}
            x, y = next(batches)
            _, logits = method.loss(x, y, weights)
            acc = 100.0 * (logits.argmax(1) == y).float().mean().item()
            genotype = space.derive(weights)
            self.decisions.append({"sample": i, "genotype": space.format_genotype(genotype), "valid_acc": acc})
            if best is None or acc > best[0]:
                best = (acc, genotype)
        method.supernet.train(was_training)
        console.print(f"random_ranking: best of {self.samples} random architectures: {best[0]:.2f} % on its valid batch")
        return [(self.name, best[1])]

    def _batches(self, stream, gen):
        """Clean valid batches from shuffled passes over the valid split (a new pass when one runs out)."""
        while True:
            idx = stream.valid_idx[torch.randperm(len(stream.valid_idx), generator=gen)]
            for chunk in idx.split(self.batch_size):
                j = chunk.to(stream.device)
                yield stream.augment.normalise(stream.x[j]), stream.y[j]
