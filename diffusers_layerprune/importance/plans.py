"""Pruning plans: which blocks to remove, given a layer importance and how many to remove.

Each plan is ``plan(importance, k) -> sorted block indices to remove``, registered by name in :data:`PLANS`.

- ``one_shot``: the ``k`` least important blocks.
- ``greedy``: the first ``k`` blocks of ``importance.extra["greedy_order"]``, written by :func:`greedy_order` (drop
  the least important block, re-score the rest with it removed, repeat), for criteria where re-scoring is defined.
- ``span``: the ``k`` consecutive blocks with the smallest angular distance ``d(l, k)`` (``angular_distance`` only).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import LayerPruneError
from .result import LayerImportance


def num_to_remove(
    depth: int, num_layers: int | None = None, ratio: float | None = None, *, remove: int | None = None
) -> int:
    """How many blocks to remove from a model of ``depth`` blocks, given exactly one of:

    - ``num_layers``: the pruned depth (blocks kept), as diffusers' ``config.num_layers`` means it;
    - ``remove``: the number of blocks to remove;
    - ``ratio``: the fraction of blocks to remove, ``round(ratio * depth)``.

    Raises :class:`LayerPruneError` unless the result removes at least one block and keeps at least one.
    """
    given = [
        name for name, value in (("num-layers", num_layers), ("remove", remove), ("ratio", ratio)) if value is not None
    ]
    if len(given) != 1:
        raise LayerPruneError(
            "give exactly one of --num-layers (blocks to keep), --remove (blocks to remove) or --ratio "
            f"(fraction to remove); got {', '.join('--' + g for g in given) or 'none'}"
        )
    if ratio is not None:
        if not 0.0 < ratio < 1.0:
            raise LayerPruneError(f"--ratio must be between 0 and 1 (the fraction of blocks to remove), got {ratio}")
        k = round(ratio * depth)
        if not 0 < k < depth:
            raise LayerPruneError(
                f"--ratio {ratio} removes {k} of {depth} blocks; choose a ratio that removes 1..{depth - 1}"
            )
        return k
    if remove is not None:
        if not 0 < remove < depth:
            raise LayerPruneError(
                f"--remove (blocks to remove) must be between 1 and {depth - 1} for a model of {depth} blocks, "
                f"got {remove}"
            )
        return remove
    if not 0 < num_layers < depth:
        raise LayerPruneError(
            f"--num-layers (blocks to keep) must be between 1 and {depth - 1} for a model of {depth} blocks, "
            f"got {num_layers}"
        )
    return depth - num_layers


def one_shot(importance: LayerImportance, k: int) -> list[int]:
    """The ``k`` least important blocks."""
    return importance.least_important(k)


def span(importance: LayerImportance, k: int) -> list[int]:
    """The span of ``k`` consecutive blocks whose removal changes the hidden state least (Gromov et al.)."""
    spans = importance.extra.get("span_distance")
    if not spans:
        raise LayerPruneError(
            f"the span plan needs an angular_distance importance file; this one is {importance.criterion}"
        )
    importance._check_k(k)
    distances = spans.get(str(k)) if isinstance(spans, dict) else None
    if not isinstance(distances, list) or len(distances) != importance.num_layers - k + 1:
        raise LayerPruneError(
            f"this angular_distance file has no span distances for {k} blocks; re-score it with `layerprune score`"
        )
    start = min(range(len(distances)), key=lambda i: (distances[i], i))
    return list(range(start, start + k))


def greedy(importance: LayerImportance, k: int) -> list[int]:
    """The first ``k`` blocks of the greedy removal order stored in the importance file."""
    order = importance.extra.get("greedy_order")
    if not order:
        raise LayerPruneError(
            "this importance file has no greedy order; score with `layerprune score --greedy-steps K` "
            "(criteria: preference, block_influence, output_loss, latent)"
        )
    importance._check_k(k)
    if k > len(order):
        raise LayerPruneError(f"the greedy order has {len(order)} steps; re-score with --greedy-steps {k} or more")
    return sorted(order[:k])


PLANS: dict[str, Callable[[LayerImportance, int], list[int]]] = {
    "one_shot": one_shot,
    "greedy": greedy,
    "span": span,
}


def plan_blocks(importance: LayerImportance, k: int, plan: str = "one_shot") -> list[int]:
    """Blocks to remove under the named plan."""
    import math

    if plan not in PLANS:
        raise LayerPruneError(f"unknown plan {plan!r}; known plans: {', '.join(PLANS)}")
    # A block without a finite value cannot be ranked: pruning on such a file would be a guess.
    bad = [i for i, v in enumerate(importance.values) if not math.isfinite(v)]
    if bad and plan != "greedy":
        raise LayerPruneError(
            f"the importance values of blocks {bad} are not finite numbers (the file is damaged or the scan did not "
            "finish); re-score with `layerprune score`"
        )
    return PLANS[plan](importance, k)


def greedy_order(scan, criterion: str, steps: int) -> list[int]:
    """Greedy removal order: remove the least important block, re-score the remaining blocks with it removed, and
    repeat ``steps`` times. Every re-score reuses the scan's embeddings and finished units (resumable)."""
    from .registry import all_criteria, get_criterion

    spec = get_criterion(criterion)
    if not spec.greedy:
        greedy_names = ", ".join(n for n, c in all_criteria().items() if c.greedy)
        raise LayerPruneError(f"greedy re-scoring is not defined for {criterion}; it is for {greedy_names}")
    if not 0 < steps < scan.num_layers:
        raise LayerPruneError(f"greedy steps must be between 1 and {scan.num_layers - 1}, got {steps}")
    removed: list[int] = []
    for _ in range(steps):
        importance = spec.compute(scan, skipped=tuple(removed))
        removed.append(next(i for i in importance.ranking() if i not in removed))
    return removed
