"""Keeping a sparsified model sparse while it trains (distillation): re-zero the pruned weights after each step.

An optimiser step moves every weight, pruned ones included (gradients, momentum, weight decay); re-applying the
mask after each step keeps the zeros where sparsification put them, so the saved model has the recorded sparsity.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import sparsifiable_layers
from .record import SparsityRecord


class WeightMasks:
    """Masks of a module's pruned weights (``True`` = kept), taken from the zeros the weights hold now."""

    def __init__(self, weights: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
        self.weights = weights

    @classmethod
    def from_record(cls, module: nn.Module, component: str, record: SparsityRecord | None) -> WeightMasks | None:
        """Masks for ``module`` (the pipeline's ``component``) when ``record`` says it was sparsified, else ``None``."""
        if record is None or component not in record.components:
            return None
        layers = sparsifiable_layers(module, component, include_final_projection=record.include_final_projection)
        with torch.no_grad():
            return cls([(layer.weight, layer.weight != 0) for layer in layers.values()])

    def to(self, device) -> WeightMasks:
        """Move the masks to ``device`` (the weights' device), in place."""
        self.weights = [(weight, keep.to(device)) for weight, keep in self.weights]
        return self

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked-out weight again (call after ``optimizer.step()``)."""
        for weight, keep in self.weights:
            weight.masked_fill_(~keep.to(weight.device), 0)

    def num_pruned(self) -> int:
        return sum(int((~keep).sum()) for _, keep in self.weights)
