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


def operation_magnitudes(weights, op_names):
    """m(t, o) = (1/N)·Σ_edges a_{e,o} of the normal cell [SS] Eq. 11 (None when edges have different op lists)."""
    if "normal" not in weights or any(ops != op_names[0] for ops in op_names):
        return None
    m = weights["normal"].detach().float().mean(dim=0)
    return {op: round(float(v), 6) for op, v in zip(op_names[0], m)}


def hessian_eigenvalue(method, valid_batch, mode="auto", exact_max=400, iters=100, tol=1e-6, chunk=32):
    """Dominant (largest) eigenvalue of ∇²_α (L_val + wd/2·‖α‖²) on one valid batch (RobustDARTS, methods.md §6.1).

    ``exact`` builds the Hessian by double back-propagation and takes ``eigvalsh``; ``power`` uses
    Hessian-vector power iteration (shifted once if the dominant eigenvalue is negative); ``auto``
    picks exact while α has at most ``exact_max`` entries. The exact Hessian's rows are computed
    ``chunk`` at a time in one batched backward pass (``is_grads_batched``: 7 passes instead of 224 for
    the DARTS space), falling back to one pass per row where an op has no batching rule.
    """
    alphas = method.arch_parameters()
    sizes = [a.numel() for a in alphas]
    wd = method.arch_opt.param_groups[0].get("weight_decay", 0.0) if hasattr(method, "arch_opt") else 0.0
    x, y = valid_batch

    def grad_fn():
        loss, _ = method.loss(x, y, method.hessian_weights())
        loss = loss + 0.5 * wd * sum((a * a).sum() for a in alphas)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, alphas, create_graph=True)])

    g = grad_fn()

    def hvp(v):
        return torch.cat([h.reshape(-1) for h in torch.autograd.grad(g, alphas, grad_outputs=v, retain_graph=True)])

    def hvps(rows):
        """Hessian rows for a block of unit vectors, in one batched backward pass."""
        out = torch.autograd.grad(g, alphas, grad_outputs=rows, retain_graph=True, is_grads_batched=True)
        return torch.cat([h.reshape(len(rows), -1) for h in out], dim=1)

    n = sum(sizes)
    if mode == "exact" or (mode == "auto" and n <= exact_max):
        eye = torch.eye(n, device=g.device, dtype=g.dtype)
        try:
            H = torch.cat([hvps(eye[i:i + chunk]) for i in range(0, n, chunk)]) if chunk and chunk > 1 else None
        except RuntimeError:  # an op without a batching rule: row by row
            H = None
        if H is None:
            H = torch.stack([hvp(eye[i]) for i in range(n)])
        H = (H + H.T) / 2
        return float(torch.linalg.eigvalsh(H.double()).max())

    def power(shift):
        v = torch.randn(n, device=g.device, dtype=g.dtype, generator=None)
        v, lam = v / v.norm(), 0.0
        for _ in range(iters):
            w = hvp(v) - shift * v
            new = float(v @ w)
            v = w / w.norm()
            if abs(new - lam) <= tol * max(1.0, abs(new)):
                return new
            lam = new
        return lam

    lam = power(0.0)
    return lam if lam >= 0 else power(lam) + lam


@torch.no_grad()
@torch.no_grad()
def discretised_accuracy(method, batches):
    """Accuracy (%) of the supernet with one-hot(argmax α) mixing weights ([SP], §6.4; NB-1Shot1: k-hot input and
    output choices, the derived cell) over ``batches`` (the search uses a fixed number of valid batches, the same
    images every epoch). The supernet's BN running statistics are left as they were."""
    weights = method.space.discretise(method.derive_weights())
    buffers = {n: b.clone() for n, b in method.supernet.named_buffers()}
    correct, n = 0, 0
    for x, y in batches:
        _, logits = method.loss(x, y, weights)
        correct, n = correct + (logits.argmax(1) == y).sum(), n + len(y)
    for name, b in method.supernet.named_buffers():
        b.copy_(buffers[name])
    return round(100.0 * float(correct) / n, 3) if n else None
