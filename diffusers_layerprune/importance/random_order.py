"""``random``: a seeded random importance, the control every comparison needs."""

from __future__ import annotations

import torch

from .base import Criterion, check_no_skipped
from .result import LayerImportance
from .runner import ImportanceScan, Variant


def random_importance(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """Uniform random values in [0, 1) per block from ``torch.Generator().manual_seed(scan.settings.seed)``."""
    check_no_skipped("random", skipped)
    generator = torch.Generator().manual_seed(scan.settings.seed)
    values = torch.rand(scan.num_layers, generator=generator, dtype=torch.float64).tolist()
    return LayerImportance(values=values, criterion="random", metadata=scan.metadata("random"))


CRITERION = Criterion(
    name="random",
    compute=random_importance,
    summary="control: seeded random order (--seed picks the draw)",
    needs_prompts=False,
)
