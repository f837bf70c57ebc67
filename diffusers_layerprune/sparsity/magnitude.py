"""``magnitude``: prune the weights of smallest absolute value (|W|), per layer or over a whole component.

The post-training pruning study of Stable Diffusion 2 found this plain criterion ahead of activation-aware ones
(Wanda, SparseGPT) on a text-to-image model, unlike on language models.
"""

from __future__ import annotations

import torch

from .base import SparsityMethod


def magnitude_scores(weight: torch.Tensor, input_norm: torch.Tensor | None = None) -> torch.Tensor:
    """``|W|`` in float32 (``input_norm`` is ignored)."""
    return weight.detach().float().abs()


METHOD = SparsityMethod(
    name="magnitude",
    score=magnitude_scores,
    group="layer",
    needs_calibration=False,
    supports_global=True,
    summary="|W|: smallest weights first, per layer (or one threshold per component with --scope global)",
)
