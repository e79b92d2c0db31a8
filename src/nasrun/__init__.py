"""nasrun: an experiment runner for differentiable neural architecture search (DARTS family)."""

__version__ = "0.1.0"
