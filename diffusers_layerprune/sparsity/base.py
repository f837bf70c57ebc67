"""What a sparsity method is: a named score per weight, the group its weights compete in, and what it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparsityMethod:
    """A post-training weight-pruning criterion, registered by name in :data:`.registry.METHOD_MODULES`.

    Attributes:
        name: the registry name (``layerprune sparsify --method NAME``).
        score: ``score(weight [out, in], input_norm [in] or None) -> [out, in]`` float32, higher = more important.
        group: comparison group of unstructured pruning at ``--scope layer``: ``"layer"`` (every weight of the
            layer competes) or ``"row"`` (each output neuron's weights compete). ``N:M`` patterns always compare
            within groups of ``M`` consecutive input weights.
        needs_calibration: the score uses input activation norms from calibration prompts.
        supports_global: scores are comparable across layers, so ``--scope global`` is meaningful.
        summary: one line for ``--help`` and the docs, with where the method comes from.
    """

    name: str
    score: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    group: str
    needs_calibration: bool
    supports_global: bool
    summary: str
