"""The criterion registry: name -> module defining ``CRITERION``. Adding a criterion = one new module + one line.

Modules load on first use, so building the ``layerprune`` parser (which lists the names) imports no torch.
"""

from __future__ import annotations

from ..registry import load_registered

CRITERIA_MODULES: dict[str, str] = {
    "preference": "preference",
    "block_influence": "block_influence",
    "angular_distance": "angular_distance",
    "output_loss": "output_loss",
    "latent": "latent",
    "weight_norm": "weight_norm",
    "random": "random_order",
    "learnable": "learnable",
}


def get_criterion(name: str):
    """The registered :class:`~diffusers_layerprune.importance.base.Criterion` ``name``; raises
    :class:`LayerPruneError` listing the known names."""
    return load_registered(CRITERIA_MODULES, name, __package__, "CRITERION", "criterion", "criteria")


def all_criteria() -> dict:
    """``{name: Criterion}`` for every registered criterion (imports them all)."""
    return {name: get_criterion(name) for name in CRITERIA_MODULES}
