"""Balanced assignment of prompts to codes: entropic optimal transport (Sinkhorn-Knopp) and the code marginals.

APTP (Ganjdanesh et al., 2024) balances the prompt -> architecture assignment with optimal transport so that the
codes do not collapse into one; the soft plan is the target of the router's contrastive term.
"""

from __future__ import annotations

import torch

from ..errors import LayerPruneError
from . import MARGINALS


def sinkhorn(
    scores: torch.Tensor,
    row_marginals: torch.Tensor,
    col_marginals: torch.Tensor,
    *,
    epsilon: float = 0.05,
    iterations: int = 2000,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """Entropic OT plan ``P [N, K]`` maximising ``<P, scores> + epsilon * H(P)`` with ``P.sum(1) == row_marginals``
    ``[N]`` and ``P.sum(0) == col_marginals`` ``[K]`` (both summing to 1), computed in log space (stable for small
    ``epsilon``). Iterates until the column sums are within ``tolerance`` of ``col_marginals`` (or ``iterations``
    run out: a small ``epsilon`` on widely spread scores converges slowly); the row sums are then exact.
    """
    if scores.ndim != 2:
        raise LayerPruneError(f"scores must be [N, K], got shape {tuple(scores.shape)}")
    if epsilon <= 0:
        raise LayerPruneError(f"epsilon must be > 0, got {epsilon}")
    log_k = scores.detach().double() / epsilon
    log_r = row_marginals.double().clamp_min(1e-300).log()
    log_c = col_marginals.double().clamp_min(1e-300).log()
    u = torch.zeros_like(log_r)
    v = torch.zeros_like(log_c)
    for _ in range(iterations):
        v = log_c - torch.logsumexp(log_k + u[:, None], dim=0)
        u = log_r - torch.logsumexp(log_k + v[None, :], dim=1)
        columns = torch.logsumexp(log_k + u[:, None] + v[None, :], dim=0).exp()
        if float((columns - log_c.exp()).abs().max()) < tolerance:
            break
    return (log_k + u[:, None] + v[None, :]).exp().to(scores.dtype)


def budget_marginals(depths: torch.Tensor, budget: float, *, iterations: int = 60) -> torch.Tensor:
    """Code shares ``q [K]`` of maximum entropy with mean depth ``sum q_k d_k == budget``: ``q_k ∝ exp(-λ d_k)``,
    ``λ`` found by bisection. When the budget is outside ``[min d, max d]`` the shares go to the shallowest (or
    deepest) codes, the closest feasible point. ``depths``: (expected) blocks run by each code ``[K]``."""
    d = depths.detach().double()
    if float(d.max() - d.min()) < 1e-9:
        return torch.full_like(d, 1.0 / len(d)).to(depths.dtype)
    lo, hi = -50.0, 50.0
    scale = 1.0 / float(d.max() - d.min())

    def mean_depth(lam: float) -> float:
        q = torch.softmax(-lam * scale * d, dim=0)
        return float((q * d).sum())

    for _ in range(iterations):  # mean depth decreases as lambda grows
        mid = (lo + hi) / 2
        if mean_depth(mid) > budget:
            lo = mid
        else:
            hi = mid
    return torch.softmax(-(lo + hi) / 2 * scale * d, dim=0).to(depths.dtype)


def code_marginals(kind: str, num_codes: int, depths: torch.Tensor | None = None, budget: float | None = None):
    """The column marginals of the assignment for ``kind`` in :data:`MARGINALS` (``None`` for ``none``)."""
    if kind == "uniform":
        return torch.full((num_codes,), 1.0 / num_codes)
    if kind == "budget":
        return budget_marginals(depths, budget)
    if kind == "none":
        return None
    raise LayerPruneError(f"unknown marginals {kind!r}; choose one of {', '.join(MARGINALS)}")


def budgeted_assignment(
    scores: torch.Tensor, depths: torch.Tensor | list[float], budget: float, *, iterations: int = 100
) -> tuple[torch.Tensor, float]:
    """Hard codes ``[N]`` for a batch whose mean depth must not exceed ``budget``, losing as little router score as
    the constraint allows.

    The Lagrangian relaxation of ``max sum_i scores[i, c_i]`` subject to ``mean_i depths[c_i] <= budget``: every
    prompt takes ``argmax_k scores[i, k] - lam * depths[k]`` with ``lam >= 0`` the smallest (found by bisection) at
    which the batch meets the budget. ``lam = 0`` is plain routing, so a batch already within budget is left as
    routed; as ``lam`` grows each prompt can only move to a shallower code, the prompts whose router preference for
    the deeper code is weakest first. ``scores``: router logits ``[N, K]``; ``depths``: blocks run by each code
    ``[K]``. Returns the codes and ``lam``. Raises :class:`LayerPruneError` when the budget is below the shallowest
    code (no assignment meets it).
    """
    if scores.ndim != 2:
        raise LayerPruneError(f"scores must be [N, K], got shape {tuple(scores.shape)}")
    s = scores.detach().double().cpu()
    d = torch.as_tensor(depths, dtype=torch.float64)
    if d.shape != (s.shape[1],):
        raise LayerPruneError(f"{len(d)} code depths for {s.shape[1]} codes")
    if budget < float(d.min()) - 1e-9:
        raise LayerPruneError(
            f"a mean of {budget:g} blocks is below the shallowest code ({float(d.min()):g} blocks): no assignment "
            "meets it; give a budget of at least that"
        )

    def assign(lam: float) -> torch.Tensor:
        return (s - lam * d).argmax(-1)

    def mean_depth(codes: torch.Tensor) -> float:
        return float(d[codes].mean())

    codes = assign(0.0)
    if mean_depth(codes) <= budget + 1e-9:
        return codes, 0.0
    gaps = d[:, None] - d[None, :]
    # above this every prompt prefers (one of) the shallowest codes: a deeper code's score advantage is at most the
    # score range, and costs at least the smallest depth gap
    lo, hi = 0.0, (float(s.max() - s.min()) + 1.0) / max(float(gaps[gaps > 1e-9].min()), 1e-9)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if mean_depth(assign(mid)) <= budget + 1e-9:
            hi = mid
        else:
            lo = mid
    return assign(hi), hi
