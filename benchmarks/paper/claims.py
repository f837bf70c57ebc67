"""The experiment's definition (criteria, ratios, what counts as restored), aggregation over seeds, and the paper's
claims as checks against the per-seed cells. Pure functions of the numbers (tested on synthetic ones)."""

from __future__ import annotations

import statistics

from .cells import mean_std

LEARNABLE = "learnable"  # TinyFusion's selection, trained for each removal count (it targets quality after recovery)
CRITERIA = (
    "preference", "block_influence", "angular_distance", "output_loss", "latent", "weight_norm", "random", LEARNABLE,
)  # fmt: skip
# Criteria that rank a block by how much the model's hidden states / outputs change without it (the paper's
# "similarity-based" baselines): the claim is that the preference criterion beats these.
SIMILARITY = ("block_influence", "angular_distance", "output_loss", "latent")
DISTILL_CRITERIA = ("preference", "block_influence", "random", LEARNABLE)
SPAN = "angular_distance (span)"
RATIOS = (0.15, 0.25, 0.40)
# "Restores" needs distillation to improve every distilled cell and to close at least this share of the accuracy gap
# to the teacher on average; improving most cells is "partly".
RESTORED = 0.5
METRICS = ("overall", "colour", "position", "shape", "size")
# The distillation budget curve: longer runs for the best distilled criterion at these ratios, and the project's goal
# for each (the share of the teacher's all-four-right accuracy a pruned model should keep).
BUDGET_STEPS = (1600, 4000)
BUDGET_RATIOS = (0.25, 0.40)
GOALS = {"0.25": 0.97, "0.40": 0.90}
# What limits the distilled models: the same run with loss terms removed (training/train_distill.py's weights; the
# recipe's own run has every term at 1.0: task, output KD, variance, block features), or with the learning rate
# scaled (``lr_scale``: times --learning-rate, same cosine schedule and warm-up).
ABLATIONS = {
    "no_feature": {"args": ("--lambda_feat", "0"), "label": "without the feature loss"},
    "output_only": {
        "args": ("--lambda_task", "0", "--lambda_feat", "0"),
        "label": "output KD only (no task, no feature)",
    },
    "lr_x4": {"args": (), "lr_scale": 4.0, "label": "learning rate x4"},
    "lr_quarter": {"args": (), "lr_scale": 0.25, "label": "learning rate x1/4"},
}


def blocks_to_drop(ratio: float, depth: int) -> int:
    """The library's rule (``layerprune prune --ratio``): ``round(ratio * depth)`` blocks."""
    from diffusers_layerprune.importance.plans import num_to_remove

    return num_to_remove(depth, ratio=ratio)


def aggregate(per_seed: dict) -> dict:
    """``per_seed[stage][ratio][criterion][seed] -> cell`` to ``[stage][ratio][criterion][metric] -> mean/std``."""
    table: dict = {}
    for stage, by_ratio in per_seed.items():
        for ratio, by_criterion in by_ratio.items():
            for criterion, by_seed in by_criterion.items():
                cells = list(by_seed.values())
                if not cells:
                    continue
                row = {m: mean_std([c["accuracy"][m] for c in cells]) for m in METRICS}
                row["toy_score"] = mean_std([c["toy_score"] for c in cells])
                table.setdefault(stage, {}).setdefault(ratio, {})[criterion] = row
    return table


def _seed_wins(per_seed: dict, stage: str, ratio: str, a: str, b: str, metric: str) -> tuple[int, int, int]:
    """``(wins, ties, seeds)``: seeds where ``a`` scores above ``b`` / the same (e.g. both chose the same blocks),
    out of the seeds both have."""
    cells_a = per_seed.get(stage, {}).get(ratio, {}).get(a, {})
    cells_b = per_seed.get(stage, {}).get(ratio, {}).get(b, {})
    common = sorted(set(cells_a) & set(cells_b))

    def value(cell):
        return cell["toy_score"] if metric == "toy_score" else cell["accuracy"][metric]

    wins = sum(value(cells_a[s]) > value(cells_b[s]) for s in common)
    ties = sum(value(cells_a[s]) == value(cells_b[s]) for s in common)
    return wins, ties, len(common)


def _value(table: dict, stage: str, ratio: str, criterion: str, metric: str) -> float | None:
    row = table.get(stage, {}).get(ratio, {}).get(criterion)
    return None if row is None else row[metric]["mean"]


def check_claims(per_seed: dict, teacher: dict, *, reference: str = "preference") -> list[dict]:
    """The paper's claims as checks against the toy-world numbers, each with a verdict and the evidence.

    ``teacher`` is the teacher's cell averaged over seeds: ``{"overall": mean, "toy_score": mean}``.
    Verdicts: ``holds`` (every comparison goes the claimed way), ``partly`` (most do), ``does not hold``.
    """
    table = aggregate(per_seed)
    claims = []
    pruned = table.get("pruned", {})
    ratios = list(pruned)

    def verdict(won: int, total: int, lost: int | None = None) -> str:
        """holds: never worse (ties allowed) and better at least once; partly: more wins than losses."""
        lost = total - won if lost is None else lost
        if total == 0:
            return "not measured"
        if lost == 0 and won > 0:
            return "holds"
        return "partly" if won > lost else "does not hold"

    def beats(others: list[str], stage: str, title: str, claim: str, reference: str = reference) -> None:
        comparisons = []
        for ratio in table.get(stage, {}):
            ref = _value(table, stage, ratio, reference, "overall")
            if ref is None:
                continue
            for other in others:
                val = _value(table, stage, ratio, other, "overall")
                if val is None:
                    continue
                wins, ties, seeds = _seed_wins(per_seed, stage, ratio, reference, other, "overall")
                cells_ref = per_seed[stage][ratio].get(reference, {})
                cells_other = per_seed[stage][ratio].get(other, {})
                same_blocks = bool(cells_ref) and all(
                    "dropped" in cells_ref[s] and cells_ref[s]["dropped"] == cells_other.get(s, {}).get("dropped")
                    for s in cells_ref
                )
                score_ref = _value(table, stage, ratio, reference, "toy_score")
                score_other = _value(table, stage, ratio, other, "toy_score")
                comparisons.append(
                    {
                        "ratio": ratio,
                        "other": other,
                        "reference_overall": ref,
                        "other_overall": val,
                        "wins": ref > val,
                        "ties": ref == val,
                        "same_blocks": same_blocks,
                        "seed_wins": wins,
                        "seed_ties": ties,
                        "seeds": seeds,
                        "reference_toy_score": score_ref,
                        "other_toy_score": score_other,
                        "wins_toy_score": score_ref > score_other,
                    }
                )
        won = sum(c["wins"] for c in comparisons)
        tied = sum(c["ties"] for c in comparisons)
        claims.append(
            {
                "id": title,
                "reference": reference,
                "claim": claim,
                "verdict": verdict(won, len(comparisons), len(comparisons) - won - tied),
                "won": won,
                "tied": tied,
                "lost": len(comparisons) - won - tied,
                "total": len(comparisons),
                "seed_won": sum(c["seed_wins"] for c in comparisons),
                "seed_tied": sum(c["seed_ties"] for c in comparisons),
                "seed_total": sum(c["seeds"] for c in comparisons),
                "toy_score_won": sum(c["wins_toy_score"] for c in comparisons),
                "comparisons": comparisons,
            }
        )

    similarity = [c for c in SIMILARITY if any(c in pruned[r] for r in ratios)]
    beats(
        similarity,
        "pruned",
        "preference_beats_similarity",
        "Before fine-tuning, removing the blocks the preference criterion ranks lowest keeps more quality than "
        "removing those the similarity criteria rank lowest, at every pruning ratio.",
    )
    beats(
        ["random"],
        "pruned",
        "preference_beats_random",
        "The preference criterion beats a random choice of blocks at every ratio.",
    )

    # Distillation restores quality: after distillation the pruned model is better, and closes most of the gap.
    comparisons = []
    for ratio, by_criterion in table.get("distilled", {}).items():
        for criterion, row in by_criterion.items():
            before = _value(table, "pruned", ratio, criterion, "overall")
            if before is None:
                continue
            after = row["overall"]["mean"]
            gap = teacher["overall"] - before
            score_before = _value(table, "pruned", ratio, criterion, "toy_score")
            score_after = row["toy_score"]["mean"]
            score_gap = teacher["toy_score"] - score_before
            comparisons.append(
                {
                    "ratio": ratio,
                    "criterion": criterion,
                    "before": before,
                    "after": after,
                    "improves": after > before,
                    "gap_closed": (after - before) / gap if gap > 0 else None,
                    "toy_score_before": score_before,
                    "toy_score_after": score_after,
                    "toy_score_gap_closed": (score_after - score_before) / score_gap if score_gap > 0 else None,
                }
            )
    won = sum(c["improves"] for c in comparisons)
    closed = [c["gap_closed"] for c in comparisons if c["gap_closed"] is not None]
    restores = verdict(won, len(comparisons))
    if restores == "holds" and (not closed or statistics.mean(closed) < RESTORED):
        restores = "partly"  # better everywhere, but most of the loss remains
    claims.append(
        {
            "id": "distillation_restores",
            "claim": "Knowledge distillation from the full model restores the quality lost by pruning.",
            "verdict": restores,
            "won": won,
            "total": len(comparisons),
            "mean_gap_closed": statistics.mean(closed) if closed else None,
            "comparisons": comparisons,
        }
    )
    # After the same distillation budget, does the choice of blocks still matter?
    distilled = table.get("distilled", {})
    beats(
        [c for c in DISTILL_CRITERIA if c != reference and any(c in distilled[r] for r in distilled)],
        "distilled",
        "preference_after_distillation",
        "After the same distillation budget, the model pruned by the preference criterion stays the best.",
    )
    if any(LEARNABLE in distilled[r] for r in distilled):
        beats(
            [c for c in DISTILL_CRITERIA if c != LEARNABLE and any(c in distilled[r] for r in distilled)],
            "distilled",
            "learnable_after_distillation",
            "Selecting blocks for what survives distillation (TinyFusion's learnable selection) beats the preference "
            "criterion, block influence and a random choice after the same distillation budget, at every ratio.",
            reference=LEARNABLE,
        )
    return claims
