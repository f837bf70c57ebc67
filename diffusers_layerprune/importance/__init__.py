"""Layer importance: one small module per criterion, registered by name (:mod:`.registry`).

Every criterion returns a :class:`LayerImportance`; plans (:data:`PLANS`) turn one into the blocks to remove.

    from diffusers_layerprune.importance import ImportanceScan, ScanSettings, compute_importance
    scan = ImportanceScan(pipe, prompts, ScanSettings(num_inference_steps=20), scorer=load_scorer("hpsv2.1"))
    importance = compute_importance("preference", scan)
    importance.save("imp.json")            # + imp.png
    importance.least_important(7)          # blocks to drop

Public names load lazily (as in the top-level package) so that the CLI parser stays light.
"""

from __future__ import annotations

from importlib import import_module

from .registry import CRITERIA_MODULES, all_criteria, get_criterion


def compute_importance(name: str, scan, **options):
    """Run criterion ``name`` on an :class:`ImportanceScan` (``options`` go to the criterion, e.g.
    ``additivity_k`` for output_loss) and return its :class:`LayerImportance`."""
    from ..errors import LayerPruneError

    criterion = get_criterion(name)
    if criterion.needs_scorer and scan.scorer is None:
        raise LayerPruneError(f"the {name} criterion needs a preference scorer; pass one (--scorer)")
    return criterion.compute(scan, **options)


_EXPORTS = {
    "LayerImportance": "result",
    "check_importance_matches": "result",
    "ImportanceScan": "runner",
    "ScanSettings": "runner",
    "Criterion": "base",
    "PLANS": "plans",
    "plan_blocks": "plans",
    "num_to_remove": "plans",
    "greedy_order": "plans",
    "score_blocks": "scoring",
}

__all__ = ["CRITERIA_MODULES", "all_criteria", "compute_importance", "get_criterion", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
