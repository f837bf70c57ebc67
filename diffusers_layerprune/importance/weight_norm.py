"""``weight_norm``: a cheap magnitude baseline, the L2 norm of all of a block's parameters.

Blocks of a DiT have identical shapes, so the norms compare directly. No prompts, no forward passes.
"""

from __future__ import annotations

import torch

from ..blocks import get_blocks
from .base import Criterion, check_no_skipped
from .result import LayerImportance
from .runner import ImportanceScan, Variant


def weight_norm(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """``sqrt(sum of squared parameters)`` per block (higher = more important)."""
    check_no_skipped("weight_norm", skipped)
    with torch.no_grad():
        values = [
            float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in block.parameters())))
            for block in get_blocks(scan.transformer)
        ]
    meta = scan.metadata("weight_norm")
    return LayerImportance(values=values, criterion="weight_norm", metadata=meta)


CRITERION = Criterion(
    name="weight_norm",
    compute=weight_norm,
    summary="magnitude baseline: L2 norm of the block's parameters",
    needs_prompts=False,
)
