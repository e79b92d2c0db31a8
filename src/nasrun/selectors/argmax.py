"""Magnitude selection (methods.md §5.1): the space's derivation rule on the method's weights."""


class ArgmaxSelector:
    """Per-edge argmax for NB201, the DARTS top-2 rule for the DARTS family (the space decides).

    Args:
        name: selector name recorded in ``genotype.json``.
    """

    reads_alpha = True  # the genotype comes from α (meaningless where α is never trained)

    def __init__(self, name="argmax"):
        self.name = name

    def select(self, space, method, **_state):
        """Return ``[(label, genotype)]``; argmax needs only the current architecture weights."""
        return [(self.name, space.derive(method.derive_weights()))]
