"""Early-stopping rules (methods.md §4.9-4.10, §5.4): given the per-epoch history, return the epoch whose
genotype should be kept, or None to go on. If a rule never fires, the final genotype is used."""

import math


class NoStop:
    """Train all epochs."""

    def __init__(self, name="none"):
        self.name = name

    def check(self, history, epochs):
        return None


class DartsPlus:
    """DARTS+ criteria ([SS] baselines): ``sc`` stops at the first epoch whose genotype has ≥ k skip
    connections (normal cell); ``rt`` when the per-edge ranking of α has been identical for k epochs.

    Args:
        criterion: ``sc`` or ``rt``.
        k: threshold (DARTS+: sc_2, rt_10).
    """

    def __init__(self, name="darts_plus", criterion="sc", k=2):
        if criterion not in ("sc", "rt"):
            raise ValueError("stop.criterion must be sc or rt")
        self.name, self.criterion, self.k = name, criterion, k

    def check(self, history, epochs):
        if self.criterion == "sc":
            return history[-1]["epoch"] if history[-1]["skip_count"] >= self.k else None
        count = 1
        for prev, cur in zip(history, history[1:]):
            count = count + 1 if _ranking(prev) == _ranking(cur) else 1
        return history[-1]["epoch"] if count >= self.k else None


def _ranking(record):
    return {key: [sorted(range(len(row)), key=lambda o: -row[o]) for row in rows] for key, rows in record["alpha"].items()}


class DartsES:
    """DARTS-ES (RobustDARTS EVLocalAvg): stop when the local average of the dominant Hessian eigenvalue
    grows by more than ``factor`` over ``delta`` of its values; roll back to epoch s = la_epoch − f·δ.

    Args:
        window: w of the local average.
        ev_freq: f, epochs between Hessian evaluations (set ``diagnostics.hessian_every`` to the same).
        start_epoch: earliest epoch the rollback target may be.
        delta: δ, the look-back in local-average values.
        factor: growth ratio that triggers the stop.
    """

    def __init__(self, name="darts_es", window=5, ev_freq=2, start_epoch=10, delta=4, factor=1.3):
        self.name, self.window, self.ev_freq = name, window, ev_freq
        self.start_epoch, self.delta, self.factor = start_epoch, delta, factor

    def local_averages(self, history, epochs):
        values, la = [], []
        for r in history:
            if r.get("hessian_eigenvalue") is None:
                continue
            values.append(r["hessian_eigenvalue"])
            if len(values) >= math.ceil(self.window / 2) and r["epoch"] != epochs - 1:
                recent = values[-self.window:] if len(values) >= self.window else values
                la.append(sum(recent) / len(recent))
        return la

    def check(self, history, epochs):
        e = history[-1]["epoch"]
        if history[-1].get("hessian_eigenvalue") is None or e == epochs - 1:
            return None
        la = self.local_averages(history, epochs)
        la_epoch = e - self.ev_freq * (self.window // 2)
        stop = la_epoch - self.ev_freq * self.delta
        if stop >= self.start_epoch and len(la) > self.delta and la[-1] / la[-1 - self.delta] > self.factor:
            return stop
        return None
