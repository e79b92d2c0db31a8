"""The genotype of the epoch with the best value of a logged metric (GAEA's bilevel runs keep the genotype of
the epoch whose supernet validation accuracy was highest; liamcli/gaea_release ``train_search.py``)."""

from ..errors import UserError


class BestEpoch:
    """Roll back to the epoch where ``metric`` of ``metrics.jsonl`` peaked (the first such epoch on ties).

    Args:
        name: selector name.
        metric: a per-epoch number in ``metrics.jsonl`` (``valid_acc``: the supernet's accuracy on the α steps'
            validation batches of that epoch; ``discrete_valid_acc``, or a benchmark-free diagnostic).
        mode: ``max`` or ``min``.
    """

    reads_alpha = True  # the genotype comes from α (meaningless where α is never trained)

    history_only = True  # reads the metrics history only (not the supernet)

    def __init__(self, name="best_epoch", metric="valid_acc", mode="max"):
        if mode not in ("max", "min"):
            raise UserError(f"selector.mode={mode!r}: choose max or min")
        self.name, self.metric, self.mode = name, metric, mode

    def check_setup(self, record_keys, **_):
        keys = record_keys()
        if self.metric not in keys:
            raise UserError(f"selector.metric={self.metric!r} is not logged by this search; choose one of "
                            f"{', '.join(sorted(keys))}")

    def select(self, space, method, history, **_state):
        values = [r.get(self.metric) for r in history]
        numbers = [(v if self.mode == "max" else -v, -t) for t, v in enumerate(values) if isinstance(v, (int, float))]
        if not numbers:
            keys = sorted(k for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float)))
            raise UserError(f"selector=best_epoch: no epoch logged a number under {self.metric!r}; "
                            f"selector.metric is one of {keys}")
        t = -max(numbers)[1]
        return [(f"{self.name}_{self.metric}@{t}", space.parse_genotype(history[t]["genotype"]))]
