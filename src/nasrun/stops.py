"""Early-stopping rules (methods.md §4.9-4.10, §5.4): given the per-epoch history, return the epoch whose
genotype should be kept, or None to go on. If a rule never fires, the final genotype is used."""

import math

from .console import console
from .errors import UserError
from .selectors.selective_stop import check_targets, magnitude_history, stop_epoch


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


_warned = set()


def _ranking(record):
    """Per-edge op order of the raw α (SS-DARTS's ``arch_parameters.argsort``): the rounded softmax in
    ``alpha`` ties tiny ops, which would make the ranking look stable too early."""
    rows = record.get("alpha_raw")
    if rows is None:  # metrics written before raw α were logged
        if "alpha" not in _warned:
            _warned.add("alpha")
            console.print("darts_plus rt: this history has no raw α (alpha_raw); ranking the rounded softmax instead, "
                          "where near-zero ops tie")
        rows = record["alpha"]
    # ascending and stable on ties, as numpy's argsort of a short row (insertion sort)
    return {key: [sorted(range(len(row)), key=lambda o: row[o]) for row in r] for key, r in rows.items()}


class AllSkipAbort:
    """SS-DARTS's abort (``DARTS-V1.py``: ``if num_skip == 6: exit()``): end the search at the first epoch whose
    normal cell is all skip connections. Unlike the other rules it does not roll back: the search simply ends
    there, a history-reading selector (``selective_stop``) picks from the epochs run, any other selector keeps
    that epoch's genotype.

    Args:
        skip_count: skip connections that make the cell all-skip (NB201: its 6 edges; DARTS cells: 8).
    """

    rollback = False

    def __init__(self, name="all_skip", skip_count=6):
        self.name, self.skip_count = name, skip_count

    def check(self, history, epochs):
        return history[-1]["epoch"] if history[-1]["skip_count"] >= self.skip_count else None


class DartsES:
    """DARTS-ES (Zela et al., ICLR 2020; RobustDARTS EVLocalAvg): stop when the local average of the dominant
    Hessian eigenvalue grows by more than ``factor`` over ``delta`` of its values; roll back to epoch
    s = la_epoch − f·δ.

    With ``adapt_weight_decay`` it is DARTS-ADA instead: when the rule fires, the search rolls back to the
    full state after epoch s (weights, α, optimisers, eigenvalue history), multiplies the weight decay by
    ``mul_factor`` and goes on; once the weight decay has reached ``max_weight_decay`` the rule no longer
    acts and the search runs to its last epoch. The genotype of the first firing (= DARTS-ES) is kept too.

    Args:
        window: w of the local average.
        ev_freq: f, epochs between Hessian evaluations (set ``diagnostics.hessian_every`` to the same); with
            ``hessian_every=1`` every epoch's value enters the local average while the epoch offsets keep f, as
            SS-DARTS's ``DARTS-V1-ES.py`` does (an ``EVLocalAvg()`` with the default f = 2, updated every epoch).
        start_epoch: earliest epoch the rollback target may be.
        delta: δ, the look-back in local-average values.
        factor: growth ratio that triggers the stop.
        adapt_weight_decay: DARTS-ADA instead of stopping.
        mul_factor: weight-decay multiplier per rollback (RobustDARTS scripts: 10; argparse default 3).
        max_weight_decay: no raise once the weight decay has reached this (scripts: 0.03; default 2.43e-2).
    """

    def __init__(self, name="darts_es", window=5, ev_freq=2, start_epoch=10, delta=4, factor=1.3,
                 adapt_weight_decay=False, mul_factor=10.0, max_weight_decay=0.03):
        self.name, self.window, self.ev_freq = name, window, ev_freq
        self.start_epoch, self.delta, self.factor = start_epoch, delta, factor
        self.adapt_weight_decay, self.mul_factor, self.max_weight_decay = adapt_weight_decay, mul_factor, max_weight_decay

    def can_raise(self, weight_decay):
        """DARTS-ADA raises the weight decay only while it is below ``max_weight_decay`` (with float slack)."""
        return self.adapt_weight_decay and weight_decay < self.max_weight_decay * (1 - 1e-6)

    def snapshot_epoch(self, epoch):
        """Epochs DARTS-ADA may roll back to: Hessian epochs from ``start_epoch`` on."""
        return self.adapt_weight_decay and epoch >= self.start_epoch and epoch % self.ev_freq == 0

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

    def check_setup(self, diagnostics, **_):
        # every f epochs (RobustDARTS), or every epoch with the epoch offsets of f (SS-DARTS's DARTS-V1-ES.py)
        if diagnostics.hessian_every not in (self.ev_freq, 1):
            raise UserError(f"stop={self.name} reads the Hessian eigenvalue every {self.ev_freq} epochs; "
                            f"add diagnostics.hessian_every={self.ev_freq}")

    def check(self, history, epochs):
        if all(r.get("hessian_eigenvalue") is None for r in history):
            raise UserError(f"stop={self.name} needs Hessian eigenvalues in the history; search with "
                            f"diagnostics.hessian_every={self.ev_freq}")
        e = history[-1]["epoch"]
        if history[-1].get("hessian_eigenvalue") is None or e == epochs - 1:
            return None
        la = self.local_averages(history, epochs)
        la_epoch = e - self.ev_freq * (self.window // 2)
        stop = la_epoch - self.ev_freq * self.delta
        if stop >= self.start_epoch and len(la) > self.delta and la[-1] / la[-1 - self.delta] > self.factor:
            return stop
        return None


class SelectiveStopOnline:
    """SS-DARTS Algorithm 1 (Zhang & Ding, CIKM 2021): single-point online stop on the operation magnitudes.

    The criterion's epoch t* (Eq. 12 ``peak`` or Eq. 13 ``residual``, with the NB201 eligibility rule) can
    only be recognised after the fact, so the search stops once t* has not changed for ``patience``
    epochs and keeps the genotype of t*. The paper leaves this detection rule open; ``patience`` is nasrun's.

    Args:
        target: the target op (NB201: nor_conv_3x3).
        criterion: ``peak`` or ``residual``.
        eligibility: the NB201 code's eligibility rule.
        patience: epochs after t* without a better epoch before stopping.
    """

    def __init__(self, name="selective_stop", target="nor_conv_3x3", criterion="residual", eligibility=True, patience=5):
        self.name, self.target, self.criterion = name, target, criterion
        self.eligibility, self.patience = eligibility, patience

    def check_setup(self, space, method, **_):
        check_targets(space, method, [self.target], [self.criterion], f"stop={self.name}", "set stop.target")

    def check(self, history, epochs):
        t = stop_epoch(magnitude_history(history), self.target, self.criterion, self.eligibility)
        return history[t]["epoch"] if history[-1]["epoch"] - history[t]["epoch"] >= self.patience else None


def replay(rule, history, epochs):
    """The epoch ``rule`` would have stopped at had it run during the search that produced ``history``
    (checked before every epoch but the first, as the search loop does), or None."""
    for i in range(1, len(history)):
        epoch = rule.check(history[:i], epochs)
        if epoch is not None:
            return epoch
    return None
