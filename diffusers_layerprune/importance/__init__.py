"""Layer importance: one small module per criterion, registered by name in :data:`CRITERIA`.

Every criterion returns a :class:`LayerImportance`; plans (:data:`PLANS`) turn one into the blocks to remove.

    from diffusers_layerprune.importance import ImportanceScan, ScanSettings, compute_importance
    scan = ImportanceScan(pipe, prompts, ScanSettings(num_inference_steps=20), scorer=load_scorer("hpsv2.1"))
    importance = compute_importance("preference", scan)
    importance.save("imp.json")            # + imp.png
    importance.least_important(7)          # blocks to drop
"""

from __future__ import annotations

from ..errors import LayerPruneError
from . import angular_distance, block_influence, latent, output_loss, preference, random_order, weight_norm
from .base import Criterion
from .plans import PLANS, greedy_order, num_to_remove, plan_blocks
from .result import LayerImportance, check_importance_matches
from .runner import ImportanceScan, ScanSettings

# name -> criterion; the CLI and the experiment scripts look names up here only.
CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        preference.CRITERION,
        block_influence.CRITERION,
        angular_distance.CRITERION,
        output_loss.CRITERION,
        latent.CRITERION,
        weight_norm.CRITERION,
        random_order.CRITERION,
    )
}


def get_criterion(name: str) -> Criterion:
    """The registered criterion ``name``; raises :class:`LayerPruneError` listing the known ones."""
    if name not in CRITERIA:
        raise LayerPruneError(f"unknown criterion {name!r}; known criteria: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def compute_importance(name: str, scan: ImportanceScan, **options) -> LayerImportance:
    """Run criterion ``name`` on ``scan`` (options go to the criterion, e.g. ``additivity_k`` for output_loss)."""
    criterion = get_criterion(name)
    if criterion.needs_scorer and scan.scorer is None:
        raise LayerPruneError(f"the {name} criterion needs a preference scorer; pass one (--scorer)")
    return criterion.compute(scan, **options)


__all__ = [
    "CRITERIA",
    "PLANS",
    "Criterion",
    "ImportanceScan",
    "LayerImportance",
    "ScanSettings",
    "check_importance_matches",
    "compute_importance",
    "get_criterion",
    "greedy_order",
    "num_to_remove",
    "plan_blocks",
]
