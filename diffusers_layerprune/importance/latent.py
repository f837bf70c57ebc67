"""``latent`` (LD-Pruner, Castells et al. 2024): how far the final latents move when one block is skipped.

Generate every prompt with the full model and with block ``l`` skipped (same initial noise). With ``mu`` and
``sigma`` the element-wise mean and standard deviation of the final latents over the prompt set,
importance = ``||mu_full - mu_l||_2 + ||sigma_full - sigma_l||_2``.
"""

from __future__ import annotations

import numpy as np

from .base import Criterion, single_block_variants
from .result import LayerImportance
from .runner import ImportanceScan, Unit, Variant, decode_floats, encode_floats


def _moments(scan: ImportanceScan, unit: Unit) -> dict:
    latents = scan.generate(unit[1], unit[0]).double()
    return {
        "n": latents.shape[0],
        "shape": list(latents.shape[1:]),
        "sum": encode_floats(latents.sum(0)),
        "sumsq": encode_floats((latents**2).sum(0)),
    }


def latent(scan: ImportanceScan, *, skipped: Variant = ()) -> LayerImportance:
    """LD-Pruner distance of the final-latent statistics per block (higher = more important)."""
    base, candidates, variants = single_block_variants(scan, skipped)
    units = [(v, b) for b in range(len(scan.batches)) for v in [(), *variants]]
    records = scan.run("latent", units, lambda unit: _moments(scan, unit))

    def stats(variant: Variant) -> tuple[np.ndarray, np.ndarray]:
        parts = [records[(variant, b)] for b in range(len(scan.batches))]
        n = sum(p["n"] for p in parts)
        total = sum(decode_floats(p["sum"]) for p in parts)
        total_sq = sum(decode_floats(p["sumsq"]) for p in parts)
        mean = total / n
        return mean, np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))

    mean_full, std_full = stats(())
    values = [float("nan")] * scan.num_layers
    for block, variant in zip(candidates, variants, strict=True):
        mean, std = stats(variant)
        values[block] = float(np.linalg.norm(mean_full - mean) + np.linalg.norm(std_full - std))
    return LayerImportance(values=values, criterion="latent", metadata=scan.metadata("latent", skipped=list(base)))


CRITERION = Criterion(
    name="latent",
    compute=latent,
    summary="LD-Pruner: ||mean_full - mean_l|| + ||std_full - std_l|| of the final latents over the prompts",
    greedy=True,
)
