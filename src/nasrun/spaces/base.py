"""The space seam: topology, ops, supernet, evaluation network, genotype codec, derivation.

A space knows nothing about α: a method turns its architecture parameters into per-edge mixing
weights ``{cell_type: Tensor[E, K]}`` and the supernet consumes them (``forward(x, weights)``).
"""

import abc
import json

import torch

from ..errors import UserError


def genotype_json(text):
    """Parse a JSON genotype (a genotype.json, or a space's own fields); one-line error when malformed."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"genotype JSON is malformed: {exc}") from None


class SearchSpace(abc.ABC):
    """Protocol every search space implements (design.md §4)."""

    name: str
    benchmark: str | None = None  # name of the tabular benchmark that answers for this space
    default_split: str = "darts"  # data protocol used with `dataset.split=auto`
    retrainable: bool = True  # build_network gives a stand-alone network (NB-1Shot1: benchmark only)

    @abc.abstractmethod
    def alpha_shapes(self):
        """``{cell_type: (num_edges, num_ops)}`` of the architecture logits a method must create."""

    @abc.abstractmethod
    def build_supernet(self, num_classes, in_channels=3):
        """The weight-sharing network; ``forward(x, weights)`` returns logits."""

    @abc.abstractmethod
    def build_network(self, genotype, num_classes, **sizes):
        """The stand-alone evaluation network of the space's protocol."""

    @abc.abstractmethod
    def derive(self, weights):
        """Genotype from mixing weights (the magnitude / argmax rule of methods.md §5.1)."""

    def discretise(self, weights):
        """The derived architecture as mixing weights: one-hot argmax per row (spaces with top-k rules override)."""
        return {k: torch.nn.functional.one_hot(w.argmax(-1), w.shape[-1]).to(w.dtype) for k, w in weights.items()}

    def sample_architecture(self, gen):
        """Mixing weights of one architecture drawn uniformly from the space (one-hot on its edges, zero on the
        edges it leaves out), so that :meth:`derive` returns it; ``gen`` is a CPU generator (RSPS)."""
        raise UserError(f"space {self.name} cannot sample architectures uniformly (needed by method=rsps and "
                        "selector=random_ranking); use nb201 or a DARTS-family space")

    @abc.abstractmethod
    def parse_genotype(self, text):
        """Parse the space's text or JSON genotype; raises ``UserError`` saying where it is malformed."""

    @abc.abstractmethod
    def format_genotype(self, genotype):
        """Printable genotype, bit-compatible with the reference code's format."""

    @abc.abstractmethod
    def num_architectures(self):
        """Exact size of the space (methods.md §8.1)."""

    @abc.abstractmethod
    def genotype_stats(self, genotype):
        """Per-genotype diagnostics: ``{"skip_count": int, "depth": int}`` (methods.md §6.5-6.6)."""
