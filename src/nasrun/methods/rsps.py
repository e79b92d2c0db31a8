"""Random search with weight sharing (RSPS / RS-WS; Li & Talwalkar, UAI 2019; methods.md §4.10, AutoDL
``RANDOM-NAS.py`` for NB201).

There is no architecture parameter to learn: every w step trains the supernet on one architecture drawn
uniformly from the space (its one-hot mixing weights), so only the sampled ops get gradients. The
architecture is then chosen by ranking random architectures on the shared weights
(``selector=random_ranking``).
"""

import torch

from ..graphs import copy_from_host
from .darts import Darts


class Rsps(Darts):
    """Uniform single-path training of the supernet.

    Args:
        Arguments: as :class:`~nasrun.methods.darts.Darts` (α is neither trained nor used by the w step).
    """

    distributed = True  # several processes: DARTS's w step on a path drawn from the CPU generator, the same on every rank

    def __init__(self, supernet, space, name="rsps", w_lr=0.025, w_lr_min=0.001, w_momentum=0.9, w_nesterov=True,
                 w_weight_decay=5e-4, grad_clip=5.0, lr_offset=0):
        super().__init__(supernet, space, name, w_lr, w_lr_min, w_momentum, w_nesterov, w_weight_decay, grad_clip,
                         3e-4, (0.5, 0.999), 0.0, False, False, 0.01, False, lr_offset)
        space.sample_architecture(torch.Generator())  # a space that cannot sample says so now, not at step 1
        device = next(supernet.parameters()).device
        self._sampled = {k: torch.zeros(*shape, device=device) for k, shape in space.alpha_shapes().items()}

    def prepare_step(self):
        """This step's architecture, drawn on the CPU generator and copied into the device buffers in place."""
        for k, w in self.space.sample_architecture(None).items():
            copy_from_host(self._sampled[k], w)

    def weight_step_weights(self):
        return self._sampled
