"""The elastic study's statistics: summaries over seeds and the paired comparison elastic - separate (a bootstrap
over (seed, caption) pairs and a t interval over seeds). Pure functions of judged cells."""

from __future__ import annotations

import random
import statistics

from paper.cells import mean_std

EVAL_SEED = 100000  # held-out image i of seed s: noise seed EVAL_SEED + 1000 s + i, as in reproduce_paper.py
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}


def _summary(records) -> dict | None:
    records = [r for r in records if r]
    if not records:
        return None
    out = {
        "overall": mean_std([r["accuracy"]["overall"] for r in records]),
        "toy_score": mean_std([r["toy_score"] for r in records]),
    }
    if all("train" in r for r in records):
        out["train_cpu_seconds"] = mean_std([r["train"]["cpu_seconds"] for r in records])
        out["train_wall_seconds"] = mean_std([r["train"]["wall_seconds"] for r in records])
    return out


def _paired(separate: list[dict], elastic: list[dict], resamples: int = 4000) -> dict:
    """Elastic - separate accuracy: per-seed differences with a t interval over seeds, and a paired bootstrap over
    (seed, caption) pairs for the pooled difference."""
    per_seed = [e["accuracy"]["overall"] - s["accuracy"]["overall"] for s, e in zip(separate, elastic, strict=True)]
    pairs = [
        (int(e) - int(s))
        for a, b in zip(separate, elastic, strict=True)
        for s, e in zip(a["correct"], b["correct"], strict=True)
    ]
    mean = statistics.mean(pairs)
    rng = random.Random(0)
    boots = sorted(statistics.mean(rng.choices(pairs, k=len(pairs))) for _ in range(resamples))
    low, high = boots[int(0.025 * resamples)], boots[int(0.975 * resamples) - 1]
    n = len(per_seed)
    half = T_975.get(n - 1, 2.0) * statistics.stdev(per_seed) / n**0.5 if n > 1 else float("nan")
    toy = [e["toy_score"] - s["toy_score"] for s, e in zip(separate, elastic, strict=True)]
    return {
        "difference": mean,
        "bootstrap_95": [low, high],
        "per_seed_difference": per_seed,
        "seed_t_95": [statistics.mean(per_seed) - half, statistics.mean(per_seed) + half],
        "toy_score_difference": statistics.mean(toy),
        "within_noise": high >= 0,
        "images": len(pairs),
    }
