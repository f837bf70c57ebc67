"""``output_loss`` (LAPTOP-Diff one-shot, Zhang et al. 2024): how much the noise prediction changes without a block.

``L_l = E ||eps_full - eps_without_l||^2`` (mean over elements) over probe timesteps and noised latents (the full
model's generation of each prompt, noised; see ``ImportanceScan.probe``) and prompts. LAPTOP-Diff ranks blocks by
``L_l`` alone, assuming the losses of removed blocks add up; :func:`additivity_check` measures that assumption:
the sum of the single-block losses of a set versus the loss of removing the whole set at once.

``eps`` is the model's prediction (its first ``in_channels`` outputs): the noise for PixArt-Sigma; for a model trained
with another ``prediction_type`` (``v_prediction``, ``sample``) the loss compares that prediction instead.
"""

from __future__ import annotations

import numpy as np

from .base import Criterion, single_block_variants
from .result import LayerImportance
from .runner import ImportanceScan, Unit, Variant, per_prompt_importance


def _loss(scan: ImportanceScan, unit: Unit) -> dict:
    variant, batch = unit
    full = scan.full_noise(batch)
    pruned = scan.predict_noise(scan.probe(batch), variant)
    per_prompt = ((full.double() - pruned.double()) ** 2).mean(dim=(0, 2, 3, 4))  # [B]
    return {"loss": per_prompt.tolist()}


def variant_losses(scan: ImportanceScan, variants: list[Variant]) -> dict[Variant, np.ndarray]:
    """Per-prompt output loss ``[N]`` of each variant against the full model."""
    units = [(v, b) for b in range(len(scan.batches)) for v in variants]
    records = scan.run("output_loss", units, lambda unit: _loss(scan, unit))
    return {v: np.concatenate([records[(v, b)]["loss"] for b in range(len(scan.batches))]) for v in variants}


def additivity_check(scan: ImportanceScan, importance: LayerImportance, blocks: list[int]) -> dict:
    """Loss of removing ``blocks`` together versus the sum of their single-block losses in ``importance``.

    Returns ``{"blocks", "sum_of_single_losses", "measured_loss", "ratio"}``; ``ratio`` = measured / sum (1 when the
    losses add up; > 1 when removing blocks together hurts more than the parts suggest).
    """
    blocks = sorted(blocks)
    measured = float(variant_losses(scan, [tuple(blocks)])[tuple(blocks)].mean())
    summed = float(sum(importance.values[b] for b in blocks))
    return {
        "blocks": blocks,
        "sum_of_single_losses": summed,
        "measured_loss": measured,
        "ratio": measured / summed if summed > 0 else float("nan"),
    }


def output_loss(scan: ImportanceScan, *, skipped: Variant = (), additivity_k: int | None = None) -> LayerImportance:
    """Mean output loss per block (higher = more important), stderr over prompts, and (one-shot scans) the
    additivity check for the ``additivity_k`` least important blocks (default: 25% of the blocks, at least 2)."""
    base, candidates, variants = single_block_variants(scan, skipped)
    losses = variant_losses(scan, variants)
    per_prompt = np.full((scan.num_layers, len(scan.prompts)), np.nan)
    for block, variant in zip(candidates, variants, strict=True):
        per_prompt[block] = losses[variant]
    result = per_prompt_importance(scan, "output_loss", per_prompt, base)
    if not base and scan.num_layers > 2:
        k = additivity_k if additivity_k is not None else max(2, round(0.25 * scan.num_layers))
        k = min(k, scan.num_layers - 1)
        result.extra["additivity"] = additivity_check(scan, result, result.least_important(k))
    return result


CRITERION = Criterion(
    name="output_loss",
    compute=output_loss,
    summary="LAPTOP-Diff one-shot: E||eps_full - eps_without_l||^2 on noised latents, plus an additivity check",
    greedy=True,
)
