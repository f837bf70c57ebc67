"""Which layers of a pipeline component are pruned: its ``nn.Linear`` weights.

Embeddings, norms, convolutions and biases are never pruned; the component's final projection (the PixArt
transformer's ``proj_out``, which writes the predicted noise and variance) is kept dense unless asked.
"""

from __future__ import annotations

import torch
from torch import nn

COMPONENTS = ("text_encoder", "transformer")
"""Pipeline components ``layerprune sparsify`` can prune, in the order they run."""

FINAL_PROJECTIONS: dict[str, tuple[str, ...]] = {"transformer": ("proj_out",)}
"""Per component, the module names of its final projection (kept dense unless ``include_final_projection``)."""


def sparsifiable_layers(
    module: nn.Module, component: str, *, include_final_projection: bool = False
) -> dict[str, nn.Linear]:
    """``{name: nn.Linear}`` of ``module`` (the pipeline's ``component``) whose weights are pruned, in module order."""
    final = set() if include_final_projection else set(FINAL_PROJECTIONS.get(component, ()))
    return {name: layer for name, layer in module.named_modules() if isinstance(layer, nn.Linear) and name not in final}


def count_zeros(layers: dict[str, nn.Linear]) -> dict[str, tuple[int, int]]:
    """``{name: (zero weights, weights)}`` of each layer."""
    with torch.no_grad():
        return {name: (int((layer.weight == 0).sum()), layer.weight.numel()) for name, layer in layers.items()}
