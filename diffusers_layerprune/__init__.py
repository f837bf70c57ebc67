"""diffusers-layerprune: depth pruning and distillation of diffusion transformers (the families in ``families/``).

Public names load lazily so that ``layerprune --help`` does not pay for importing torch and diffusers.

One function per stage of the recipe (each is what the matching ``layerprune`` command calls):
``score_blocks`` -> :class:`LayerImportance`, ``prune_to_folder`` -> a pruned transformer (``Pruned<Family>Transformer``),
``distill_student`` -> :class:`DistillConfig`, ``evaluate_pipeline`` -> :class:`EvalReport`, ``push_pipeline``;
``run_recipe(Recipe(...))`` chains them.
"""

import os
from importlib import import_module

# OpenMP threads that spin while waiting stall badly when another process holds a core: measured 37x slower for
# the toy pipeline with 2 threads beside one busy process; a passive wait made it 85x faster. Applies only if set
# before torch is first imported; set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.2.0"

_EXPORTS = {
    "ModelFamily": "families",
    "get_family": "families",
    "load_pipeline": "modeling",
    "prune_pipeline": "modeling",
    "save_pruned_pipeline": "modeling",
    "prune_to_folder": "modeling",
    "score_blocks": "importance",
    "distill_student": "distill",
    "DistillConfig": "distill",
    "evaluate_pipeline": "evaluation",
    "EvalReport": "evaluation",
    "push_pipeline": "hub",
    "LaunchSettings": "launch",
    "Recipe": "recipe",
    "run_recipe": "recipe",
    "skip_blocks": "blocks",
    "capture_block_features": "blocks",
    "get_blocks": "blocks",
    "resolve_kept_layers": "blocks",
    "LayerPruneError": "errors",
    "load_scorer": "scorers",
    "LayerImportance": "importance",
    "ImportanceScan": "importance",
    "compute_importance": "importance",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    if name.startswith("Pruned"):  # each family's pruned class, defined by its module in families/
        value = import_module(".families", __name__).exported(name)
        if value is not None:
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
