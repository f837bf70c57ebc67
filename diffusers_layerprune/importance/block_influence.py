"""``block_influence`` (ShortGPT, Men et al. 2024): how much a block changes its input.

``BI_l = 1 - cos(h_in, h_out)`` per image token, averaged over tokens, probe timesteps and prompts; the probe is the
full model's generation of each prompt noised to sampled timesteps (see ``ImportanceScan.probe``).
"""

from __future__ import annotations

import numpy as np
import torch

from .base import Criterion, single_block_variants
from .result import LayerImportance
from .runner import ImportanceScan, Unit, Variant, per_prompt_importance


def _influence(scan: ImportanceScan, unit: Unit) -> dict:
    variant, batch = unit
    per_step = []
    steps = scan.hidden_states(batch, variant)
    for _, states in steps:
        cos = [
            torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(-1)
            for a, b in zip(states[:-1], states[1:], strict=True)
        ]
        per_step.append(1.0 - torch.stack(cos, dim=1).double())  # [B, executed blocks]
    values = torch.stack(per_step).mean(0)
    return {"blocks": list(steps[0][0]), "values": values.tolist()}


def block_influence(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """Mean ``1 - cos(block input, block output)`` per block (higher = more important), stderr over prompts."""
    base, _, _ = single_block_variants(scan, skipped)
    records = scan.run("block_influence", [(base, b) for b in range(len(scan.batches))], lambda u: _influence(scan, u))
    per_prompt = np.full((scan.num_layers, len(scan.prompts)), np.nan)
    for b, rows in enumerate(scan.batches):
        record = records[(base, b)]
        per_prompt[record["blocks"], rows.start : rows.stop] = np.asarray(record["values"]).T
    return per_prompt_importance(scan, "block_influence", per_prompt, base)


CRITERION = Criterion(
    name="block_influence",
    compute=block_influence,
    summary="ShortGPT: 1 - cos(block input, block output), averaged over tokens, timesteps and prompts",
    greedy=True,
)
