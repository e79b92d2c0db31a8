"""Per-epoch diagnostics logged for every method (methods.md §6.3, §6.8)."""

import torch


def ies_entropy(weights):
    """IES [SP]: −Σ_e Σ_o a log a of the mixing weights, summed over cell types (lower = sparser)."""
    return float(sum(-(w * torch.log(w.clamp_min(1e-12))).sum() for w in weights.values()))


def tse_estimators(losses, last=1, mu=0.9):
    """TSE, TSE-E (sum of the last ``last`` epochs) and TSE-EMA from the per-epoch mean train losses so far."""
    losses = [x for x in losses if x is not None]
    if not losses:
        return {"tse": None, "tse_e": None, "tse_ema": None}
    ema = losses[0]
    for x in losses[1:]:
        ema = (1 - mu) * ema + mu * x
    return {"tse": sum(losses), "tse_e": sum(losses[-last:]), "tse_ema": ema}
