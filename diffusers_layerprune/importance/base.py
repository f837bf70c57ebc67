"""What a criterion is: a named function ``compute(scan, *, skipped=()) -> LayerImportance`` and what it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .result import LayerImportance
from .runner import ImportanceScan, Variant


@dataclass(frozen=True)
class Criterion:
    """A layer-importance criterion, registered by name in :data:`.registry.CRITERIA_MODULES`.

    Attributes:
        name: the registry name (``layerprune score --criterion NAME``).
        compute: ``compute(scan, *, skipped=()) -> LayerImportance``. ``skipped`` are blocks already removed (greedy
            plans); their values are NaN. Criteria that do not support it accept only ``()``.
        summary: one line for ``--help`` and docs, with the paper it comes from.
        needs_scorer: the scan must carry a preference scorer.
        needs_prompts: the criterion runs the model on prompts (``False``: weights only, or none at all).
        greedy: re-scoring with blocks already removed is meaningful (the ``greedy`` plan).
        adaptive: the criterion generates images and gives a value per prompt, so ``layerprune score --adaptive``
            can stop generating blocks whose place relative to the cut is settled (:mod:`.adaptive`).
        options: keyword options ``compute`` takes from ``layerprune score`` (``remove``: the number of blocks to
            remove, for criteria that learn a selection of that size; ``group_size``, ``steps``).
    """

    name: str
    compute: Callable[..., LayerImportance]
    summary: str
    needs_scorer: bool = False
    needs_prompts: bool = True
    greedy: bool = False
    adaptive: bool = False
    options: tuple[str, ...] = ()


def single_block_variants(scan: ImportanceScan, skipped: Variant) -> tuple[Variant, list[int], list[Variant]]:
    """``(base, candidates, variants)``: the already-removed blocks, the blocks still in, and one variant per
    candidate (base plus that block), each sorted."""
    base = tuple(sorted(set(skipped)))
    candidates = [i for i in range(scan.num_layers) if i not in base]
    if not candidates or len(candidates) == 1 and base:
        from ..errors import LayerPruneError

        raise LayerPruneError(f"nothing left to score: blocks {list(base)} are already removed")
    return base, candidates, [tuple(sorted((*base, i))) for i in candidates]


def check_no_skipped(name: str, skipped: Variant) -> None:
    if skipped:
        from ..errors import LayerPruneError

        raise LayerPruneError(f"the {name} criterion does not re-score with blocks removed; use the one_shot plan")
