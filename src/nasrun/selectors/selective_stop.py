"""Selective stop (SS-DARTS, Zhang & Ding CIKM'21; methods.md §5.3), Algorithm 2: train all epochs, then roll
back to the epoch t* that the operation-magnitude criterion picks, one genotype per target op and criterion.

m(t, o) is the mean over the normal cell's edges of softmax(α)_o (logged per epoch as ``op_magnitude``).
Eq. 12 ("peak"): t* = argmax_t m(t, o*). Eq. 13 ("residual"): t* = argmax_t Σ_{j≠*} (m(t, o*) − m(t, o_j)).
With ``eligibility`` (the NB201 code): an epoch counts if o* is the dominant op then, or if o* has never been
dominant yet; once it has, the epochs where it is not dominant are excluded.
"""

from ..errors import UserError


def stop_epoch(magnitudes, target, criterion, eligibility):
    """t* for one target op over a list of per-epoch ``{op: m}`` dicts."""
    if criterion not in ("peak", "residual"):
        raise UserError(f"selective_stop criterion must be peak or residual, not {criterion!r}")
    best, best_score, seen_dominant = None, None, False
    for t, m in enumerate(magnitudes):
        if target not in m:
            raise UserError(f"selective_stop: op {target!r} is not in this space (ops: {sorted(m)})")
        dominant = max(m, key=m.get) == target
        if eligibility and seen_dominant and not dominant:
            continue
        seen_dominant = seen_dominant or dominant
        score = m[target] if criterion == "peak" else sum(m[target] - v for o, v in m.items() if o != target)
        if best_score is None or score > best_score:
            best, best_score = t, score
    return best


def check_targets(space, method, targets, criteria=("residual",), who="selective_stop", hint="set the targets"):
    """Before training: the space logs operation magnitudes (its edges share one op list) and has every target op."""
    from ..diagnostics import operation_magnitudes

    bad = [c for c in criteria if c not in ("peak", "residual")]
    if bad:
        raise UserError(f"{who}: criterion {bad[0]!r} is neither peak nor residual")
    ops = operation_magnitudes(method.derive_weights(), space.op_names("normal"))
    if ops is None:
        raise UserError(f"{who} reads operation magnitudes, which space {space.name} has no single op list for; "
                        "use an NB201 or DARTS-family space")
    missing = [t for t in targets if t not in ops]
    if missing:
        raise UserError(f"{who}: op {missing[0]!r} is not in space {space.name} (its ops: {', '.join(sorted(ops))}); "
                        f"{hint}")


def magnitude_history(history):
    """Per-epoch ``{op: m}`` from the metrics records; a one-line error where the space has none."""
    magnitudes = [r.get("op_magnitude") for r in history]
    if not magnitudes or any(m is None for m in magnitudes):
        raise UserError("selective_stop needs operation magnitudes, which exist only for spaces whose edges "
                        "share one op list")
    return magnitudes


class SelectiveStop:
    """One genotype per (criterion, target op) from the α history.

    Args:
        name: selector name.
        targets: target ops (NB201: nor_conv_3x3; DARTS space: sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5).
        criteria: ``peak`` (Eq. 12) and/or ``residual`` (Eq. 13, the NB201 default).
        eligibility: the NB201 code's eligibility rule (the DARTS-space script uses none).
    """

    reads_alpha = True  # the genotype comes from α (meaningless where α is never trained)

    history_only = True  # reads the metrics history only (not the supernet)

    def __init__(self, name="selective_stop", targets=("nor_conv_3x3",), criteria=("residual",), eligibility=True):
        self.name, self.targets, self.criteria, self.eligibility = name, list(targets), list(criteria), eligibility

    def check_setup(self, space, method, **_):
        ops = (space.op_names("normal") or [[]])[0]
        other = next((name for name, op in (("selective_stop_darts", "sep_conv_3x3"), ("selective_stop", "nor_conv_3x3"))
                      if op in ops and name != self.name), None)
        check_targets(space, method, self.targets, self.criteria, f"selector={self.name}",
                      f"use selector={other} (this space's targets) or set selector.targets" if other
                      else "set selector.targets to ops of this space")

    def select(self, space, method, history, **_state):
        magnitudes = magnitude_history(history)
        out = []
        for criterion in self.criteria:
            for target in self.targets:
                t = stop_epoch(magnitudes, target, criterion, self.eligibility)
                out.append((f"{criterion}_{target}@{t}", space.parse_genotype(history[t]["genotype"])))
        return out
