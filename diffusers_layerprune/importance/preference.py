"""``preference`` (DiT-Pruner): the drop of a human-preference score when one block is skipped.

For block ``l``: generate every prompt with the full model and with block ``l`` skipped, same initial noise and
settings, and score both images with a preference model (HPSv2.1 for real models, the toy scorer on the toy world).
Importance = mean over prompts of ``score_full - score_without_l``, with its standard error over prompts.
"""

from __future__ import annotations

import numpy as np

from ..errors import LayerPruneError
from .base import Criterion, single_block_variants
from .result import LayerImportance
from .runner import ImportanceScan, Unit, Variant, per_prompt_importance


def _scores(scan: ImportanceScan, unit: Unit) -> dict:
    variant, batch = unit
    images = scan.decode(scan.generate(batch, variant))
    scores = scan.scorer(images, scan.prompts_of(batch))
    return {"scores": [float(s) for s in scores.float().cpu()]}


def variant_scores(scan: ImportanceScan, variants: list[Variant], batches=None) -> dict[Variant, np.ndarray]:
    """Preference score of every prompt ``[N]`` for each variant (resumable units ``(variant, batch)``); with
    ``batches`` (prompt batch indices) only the prompts of those batches, in order."""
    if scan.scorer is None:
        raise LayerPruneError("the preference criterion needs a scorer; pass --scorer (e.g. hpsv2.1 or toy)")
    batches = list(range(len(scan.batches)) if batches is None else batches)
    units = [(v, b) for b in batches for v in variants]
    records = scan.run("preference", units, lambda unit: _scores(scan, unit))
    return {v: np.concatenate([records[(v, b)]["scores"] for b in batches]).astype(np.float64) for v in variants}


def preference(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """Mean preference-score drop per block (higher = more important), stderr over prompts, per-prompt drops."""
    base, candidates, variants = single_block_variants(scan, skipped)
    scores = variant_scores(scan, [(), *variants])
    full = scores[()]
    drops = np.full((scan.num_layers, len(full)), np.nan)
    for block, variant in zip(candidates, variants, strict=True):
        drops[block] = full - scores[variant]
    extra = {
        "full_model_score": float(full.mean()),
        "variant_scores": {str(b): float(scores[v].mean()) for b, v in zip(candidates, variants, strict=True)},
    }
    return per_prompt_importance(scan, "preference", drops, base, extra)


CRITERION = Criterion(
    name="preference",
    compute=preference,
    summary="DiT-Pruner: mean preference-score drop when the block is skipped (same seeds), with stderr",
    needs_scorer=True,
    greedy=True,
    adaptive=True,
)
