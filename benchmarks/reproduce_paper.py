"""The DiT-Pruner experiment on the bundled toy world: every criterion, three pruning ratios, three seeds, with and
without distillation. Writes benchmarks/results/reproduce_paper.json, docs/results.md and docs/results.png.

For each seed ``s`` (0, 1, 2 by default):

1. Score the 12 blocks of the toy teacher with every criterion (one shared scan, the settings of
   ``layerprune score --model toy``) on ``--score-prompts`` training captions drawn with seed ``s``, noise seeds
   ``1000 s + i``; ``random`` is the draw of seed ``1000 s``. Importance files go to ``OUTPUT/seed-s/importance``.
2. For each ratio (15%, 25%, 40% -> 2, 3, 5 of 12 blocks), drop each criterion's least important blocks (plan
   ``one_shot``; angular distance also with its ``span`` plan) and judge the 216 held-out captions (noise seeds
   ``EVAL_SEED + 1000 s + i``, none used in scoring or training): judge accuracy (colour, position, shape, size;
   overall = all four right) and toy preference score. Skipping blocks computes exactly what the pruned model
   computes (tests/test_modeling.py), so no copy is saved for this step.
3. For the ``--distill-criteria`` (preference, block_influence, random), save the pruned pipeline, distil it from
   the teacher with ``training/train_distill.py`` for a fixed ``--distill-steps`` budget (seed ``s``, prompt-only
   KD on the toy training captions: output + feature losses), and judge it the same way.

Every judged cell is appended to ``OUTPUT/cells.jsonl`` as it finishes; a re-run (after a crash, or with more
seeds) reuses finished cells and distilled models, so only missing work runs. ``--report-only`` rebuilds the JSON,
the doc and the plot from the cells.

    python benchmarks/reproduce_paper.py                        # the full grid: ~36 min on a 2-core CPU
    python benchmarks/reproduce_paper.py --report-only          # rewrite docs/results.md from runs/reproduce_paper
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = ROOT / "training" / "train_distill.py"

CRITERIA = ("preference", "block_influence", "angular_distance", "output_loss", "latent", "weight_norm", "random")
# Criteria that rank a block by how much the model's hidden states / outputs change without it (the paper's
# "similarity-based" baselines): the claim is that the preference criterion beats these.
SIMILARITY = ("block_influence", "angular_distance", "output_loss", "latent")
DISTILL_CRITERIA = ("preference", "block_influence", "random")
SPAN = "angular_distance (span)"
RATIOS = (0.15, 0.25, 0.40)
# "Restores" needs distillation to improve every distilled cell and to close at least this share of the accuracy gap
# to the teacher on average; improving most cells is "partly".
RESTORED = 0.5
METRICS = ("overall", "colour", "position", "shape", "size")


# ---------------------------------------------------------------------------------------------------------------
# Cells: one judged model (teacher, pruned or distilled) per line of a JSONL file.


def cell_key(stage: str, seed: int, dropped, variant: str = "") -> str:
    """``variant`` names the distillation settings, so cells of other budgets in the same folder are not reused."""
    stage = f"{stage}[{variant}]" if variant else stage
    return f"{stage}|seed={seed}|drop={','.join(str(b) for b in dropped)}"


class Cells:
    """Append-only store of judged cells; a line is written (and flushed to disk) as soon as its cell is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        self.computed = 0
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill: that cell is computed again
                        continue
                    self.records[record["key"]] = record

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def put(self, key: str, record: dict) -> dict:
        record = {"key": key, **record}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[key] = record
        self.computed += 1
        return record


# ---------------------------------------------------------------------------------------------------------------
# Aggregation and claims (pure functions of the per-seed results; tested on synthetic numbers).


def blocks_to_drop(ratio: float, depth: int) -> int:
    return max(1, round(ratio * depth))


def mean_std(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
        "values": values,
    }


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

    def beats(others: list[str], stage: str, title: str, claim: str) -> None:
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
    return claims


# ---------------------------------------------------------------------------------------------------------------
# Report: docs/results.md and its plot.


def _fmt(row: dict | None, metric: str, percent: bool = True) -> str:
    if row is None:
        return "-"
    m = row[metric]
    if percent:
        return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def _ratio_label(ratio: str, depth: int) -> str:
    return f"{float(ratio):.0%} ({blocks_to_drop(float(ratio), depth)} of {depth})"


def write_plot(result: dict, path: Path) -> None:
    """Top row: every criterion before distillation; bottom row: the distilled criteria before (solid) and after
    (dashed) distillation. Left: judge accuracy, right: toy preference score; error bars are the std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table, depth = result["table"], result["num_layers"]
    ratios = sorted(table.get("pruned", {}), key=float)
    ks = [blocks_to_drop(float(r), depth) for r in ratios]
    names = [*CRITERIA, SPAN]
    colours = dict(zip(names, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    panels = {
        (0, "overall"): "before distillation: all four attributes right",
        (0, "toy_score"): "before distillation: toy preference score",
        (1, "overall"): "distillation: all four attributes right",
        (1, "toy_score"): "distillation: toy preference score",
    }
    for (row, metric), title in panels.items():
        ax = axes[row][0 if metric == "overall" else 1]
        ax.axhline(result["teacher"][metric]["mean"], color="black", lw=1, ls=":", label="teacher (12 blocks)")
        stages = [("pruned", "-", "o")] if row == 0 else [("pruned", "-", "o"), ("distilled", "--", "s")]
        for stage, style, marker in stages:
            for criterion in names:
                if row == 1 and criterion not in result["distill_criteria"]:
                    continue
                cells = [table.get(stage, {}).get(r, {}).get(criterion) for r in ratios]
                points = [(k, c[metric]) for k, c in zip(ks, cells, strict=True) if c]
                if not points:
                    continue
                label = criterion if stage == "pruned" else f"{criterion} + distillation"
                ax.errorbar(
                    [k for k, _ in points],
                    [m["mean"] for _, m in points],
                    yerr=[m["std"] for _, m in points],
                    ls=style,
                    marker=marker,
                    ms=4,
                    capsize=3,
                    color=colours[criterion],
                    label=label,
                )
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.set_xticks(ks, [f"{k} ({float(r):.0%})" for k, r in zip(ks, ratios, strict=True)])
        if row == 1:
            ax.set_xlabel(f"blocks removed of {depth}")
        if metric == "overall":
            ax.set_ylabel("held-out, mean ± std over seeds")
        if metric == "toy_score":
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


VERDICT_WORDS = {"holds": "**Holds**", "partly": "**Partly holds**", "does not hold": "**Does not hold**"}


def _claims_markdown(result: dict) -> list[str]:
    lines = []
    depth = result["num_layers"]
    for claim in result["claims"]:
        verdict = VERDICT_WORDS.get(claim["verdict"], claim["verdict"])
        lines.append(f"- {verdict}: {claim['claim']}")
        if claim["id"] == "distillation_restores":
            if claim["total"] == 0:
                lines.append("  Not measured (no distilled cells).")
                continue
            lines.append(
                f"  Distillation improved the all-four-right accuracy in {claim['won']} of {claim['total']} "
                f"(criterion, ratio) cells and closed on average {100 * claim['mean_gap_closed']:.0f}% of the gap to "
                "the teacher:"
            )
            for c in claim["comparisons"]:
                closed = "-" if c["gap_closed"] is None else f"{100 * c['gap_closed']:.0f}%"
                lines.append(
                    f"  {c['criterion']} at {_ratio_label(c['ratio'], depth)}: {100 * c['before']:.1f}% -> "
                    f"{100 * c['after']:.1f}% (gap closed {closed}; toy score {c['toy_score_before']:.3f} -> "
                    f"{c['toy_score_after']:.3f});"
                )
            continue
        if claim["total"] == 0:
            lines.append("  Not measured.")
            continue
        lost = [c for c in claim["comparisons"] if not c["wins"] and not c["ties"]]
        tied = [c for c in claim["comparisons"] if c["ties"]]
        lines.append(
            f"  Preference has the higher mean accuracy in {claim['won']} of {claim['total']} (ratio, rival) "
            f"comparisons, the same in {claim['tied']}, a lower one in {claim['lost']}; seed by seed it is higher "
            f"in {claim['seed_won']} of {claim['seed_total']} and the same in {claim['seed_tied']}. Mean toy score: "
            f"higher in {claim['toy_score_won']} of {claim['total']}."
        )

        def where(items):
            return "; ".join(
                f"{c['other']} at {_ratio_label(c['ratio'], depth)} ({100 * c['other_overall']:.1f}% vs "
                f"{100 * c['reference_overall']:.1f}%"
                + (", the same blocks in every seed)" if c.get("same_blocks") else ")")
                for c in items
            )

        if tied:
            lines.append(f"  Ties (equal mean accuracy): {where(tied)}.")
        if lost:
            lines.append(f"  Where preference loses: {where(lost)}.")
    return lines


def _ranking_lines(result: dict) -> list[str]:
    """Per ratio, the criteria ranked by mean all-four-right accuracy, before and after distillation."""
    table, depth = result["table"], result["num_layers"]
    teacher = 100 * result["teacher"]["overall"]["mean"]
    lines = []
    for ratio in sorted(table.get("pruned", {}), key=float):
        line = f"- {_ratio_label(ratio, depth)} removed (teacher {teacher:.1f}%):"
        for stage, label in (("pruned", "before distillation"), ("distilled", "after distillation")):
            rows = table.get(stage, {}).get(ratio, {})
            ranked = sorted(
                ((row["overall"]["mean"], name) for name, row in rows.items() if name != SPAN), reverse=True
            )
            if ranked:
                text = f"{ranked[0][1]} {100 * ranked[0][0]:.1f}%"
                for (previous, _), (mean, name) in zip(ranked, ranked[1:], strict=False):
                    text += f" {'=' if mean == previous else '>'} {name} {100 * mean:.1f}%"
                line += f" {label}, {text};"
        lines.append(line.rstrip(";") + ".")
    return lines


def render_results(result: dict) -> str:
    table, depth, settings = result["table"], result["num_layers"], result["settings"]
    ratios = sorted(table.get("pruned", {}), key=float)
    teacher = result["teacher"]
    seeds = result["seeds"]
    out = [
        "# Results: the DiT-Pruner experiment on the toy world",
        "",
        "<!-- Generated by benchmarks/reproduce_paper.py; edit the script, not this file. -->",
        "",
        "Does the recipe of the DiT-Pruner paper (rank blocks by the loss in human-preference score when each one is "
        "removed, prune, then distil from the full model) hold up on a world where we can check every image? This "
        "page answers with the bundled toy world (docs/toy_world.md): a 12-block PixArt-architecture teacher whose "
        "images a rule-based judge checks for colour, position, shape and size, and a toy preference scorer that "
        "stands in for HPSv2.1.",
        "",
        "Regenerate every number, table and the plot on this page (about "
        f"{result['total_minutes']:.0f} min of compute on a {result['machine']}; finished cells are reused):",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        "## What was run",
        "",
        f"- Seeds {', '.join(map(str, seeds))}. A seed picks the {settings['score_prompts']} training captions the "
        "criteria score with, the noise of the scan, the random criterion's draw, the noise of the held-out images, "
        "and the distillation run.",
        f"- Criteria: {', '.join(result['criteria'])}; also `{SPAN}` (the contiguous span of Gromov et al.). "
        "All scored in one shared scan per seed with the settings of `layerprune score --model toy` "
        f"({settings['num_inference_steps']} steps, guidance {settings['guidance_scale']}, "
        f"{settings['resolution']} px).",
        "- Ratios: " + ", ".join(_ratio_label(r, depth) for r in ratios) + " blocks removed (plan `one_shot`).",
        f"- Judged on {'all ' if result['eval_prompts'] == 216 else ''}{result['eval_prompts']} held-out captions "
        "(never seen in training or scoring); "
        "accuracy = share of images with all four attributes right; toy score = mean toy preference score.",
        f"- Distillation: {', '.join(result['distill_criteria'])} at every ratio, {settings['distill_steps']} steps of "
        f"`training/train_distill.py` (batch {settings['distill_batch_size']}, lr {settings['learning_rate']}, cosine, "
        "output + feature KD, prompt-only on the toy training captions, full fine-tuning), the same budget for "
        "every cell.",
        f"- Teacher (12 blocks): {100 * teacher['overall']['mean']:.1f}% ± {100 * teacher['overall']['std']:.1f} "
        f"all four right, toy score {teacher['toy_score']['mean']:.3f} ± {teacher['toy_score']['std']:.3f}.",
        "",
        "Cells are mean ± standard deviation over the seeds.",
        "",
        "## The criteria ranked",
        "",
        "Mean all-four-right accuracy over the seeds (`>` orders the means, it is not a significant difference; `=` "
        "is equal means):",
        "",
        *_ranking_lines(result),
        "",
        "## Claims of the paper, checked",
        "",
        "A comparison claim **holds** when the preference criterion has the higher mean all-four-right accuracy in "
        "every (ratio, rival) comparison, **partly holds** when it has it in most. Distillation *restores* quality "
        "when it improves every distilled cell and closes at least "
        f"{RESTORED:.0%} of the gap to the teacher on average (improving most cells is *partly*).",
        "",
        *_claims_markdown(result),
        "",
        "![accuracy and toy score against blocks removed](results.png)",
        "",
        "Solid lines: pruned, before distillation; dashed: after distillation; dotted: the teacher.",
        "",
    ]

    def stage_table(stage: str, metric: str, percent: bool) -> list[str]:
        """Criteria x ratios, mean ± std; distilled cells read ``before -> after ± std``."""
        rows = table.get(stage, {})
        criteria = [c for c in [*CRITERIA, SPAN] if any(c in rows.get(r, {}) for r in ratios)]
        lines = ["| criterion | " + " | ".join(_ratio_label(r, depth) for r in ratios) + " |"]
        lines.append("|---" * (len(ratios) + 1) + "|")
        for criterion in criteria:
            cells = []
            for r in ratios:
                cell = _fmt(rows.get(r, {}).get(criterion), metric, percent)
                before = table["pruned"].get(r, {}).get(criterion)
                if stage == "distilled" and cell != "-" and before is not None:
                    mean = before[metric]["mean"]
                    cell = (f"{100 * mean:.1f}" if percent else f"{mean:.3f}") + f" → {cell}"
                cells.append(cell)
            lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
        return lines

    def section(title: str, stage: str) -> list[str]:
        return [
            f"## {title}",
            "",
            "Judge accuracy, all four attributes right (%):",
            "",
            *stage_table(stage, "overall", True),
            "",
            "Toy preference score:",
            "",
            *stage_table(stage, "toy_score", False),
            "",
        ]

    out += [
        *section("Before distillation", "pruned"),
        *section(f"After distillation ({settings['distill_steps']} steps; before → after ± std)", "distilled"),
        "## Per attribute (before distillation, mean over seeds, %)",
        "",
    ]
    for ratio in ratios:
        out += [f"{_ratio_label(ratio, depth)} removed:", "", "| criterion | colour | position | shape | size |"]
        out.append("|---|---|---|---|---|")
        for criterion, row in table["pruned"][ratio].items():
            out.append(
                f"| {criterion} | "
                + " | ".join(f"{100 * row[m]['mean']:.1f}" for m in ("colour", "position", "shape", "size"))
                + " |"
            )
        out.append("")
    out += ["## Blocks removed, per seed", "", "| criterion | " + " | ".join(_ratio_label(r, depth) for r in ratios) + " |"]  # fmt: skip
    out.append("|---" * (len(ratios) + 1) + "|")
    for criterion in [*CRITERIA, SPAN]:
        plans = result["plans"].get(criterion)
        if not plans:
            continue
        cells = [" / ".join(str(plans[r][str(s)]) for s in seeds if str(s) in plans.get(r, {})) for r in ratios]
        out.append(f"| {criterion} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Limits of this evidence",
        "",
        "- The toy world is not PixArt-Sigma: 12 blocks of width 64 at 32 px, one judge, a scorer trained on the same "
        "world. It shows whether the method's logic holds where every image can be checked, not the paper's "
        "numbers on a 600M-parameter model with HPSv2.1.",
        "- The preference criterion and the evaluation use the same kind of signal (the toy scorer rewards what the "
        "judge checks), which favours it; the similarity criteria never see images. The judge, not the scorer, is "
        "the primary measure here for that reason.",
        f"- {len(seeds)} seed{'s' if len(seeds) > 1 else ''} give a spread, not a significance test; differences "
        "smaller than the spreads above "
        "are not evidence either way.",
        "- One distillation budget, full fine-tuning only (LoRA at this scale: docs/distillation.md).",
        "",
        "References: DiT-Pruner: HPS-guided layer removal and knowledge distillation for PixArt-Sigma (ECCV 2024 "
        "workshop); Men et al., *ShortGPT* (block influence, 2024); Gromov et al., *The Unreasonable "
        "Ineffectiveness of the Deeper Layers* (angular distance, 2024); Wu et al., *Human Preference Score v2* "
        "(HPSv2, 2023). Criteria details: docs/criteria.md.",
        "",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------------------
# The experiment.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="fractions of the blocks to remove")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--criteria", default=",".join(CRITERIA))
    p.add_argument("--distill-criteria", default=",".join(DISTILL_CRITERIA), help='"" skips distillation')
    p.add_argument("--score-prompts", type=int, default=64, help="training captions each scan scores with")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out captions judged (default: all 216)")
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--num-inference-steps", type=int, default=None, help="default: the model's (toy: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass while scoring and judging")
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--distill-samples", type=int, default=None, help="cap on distillation captions (tests)")
    p.add_argument("--output", default="runs/reproduce_paper", help="cells, importance files, distilled models")
    p.add_argument("--results", default="benchmarks/results/reproduce_paper.json")
    p.add_argument("--doc", default="docs/results.md", help="the generated page; its plot goes next to it (.png)")
    p.add_argument("--report-only", action="store_true", help="rebuild the JSON and the doc from finished cells")
    p.add_argument("--keep-models", action="store_true", help="keep the pruned/distilled pipelines on disk")
    return p.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Experiment:
    def __init__(self, args) -> None:
        from diffusers_layerprune.errors import LayerPruneError
        from diffusers_layerprune.importance import CRITERIA_MODULES

        self.args = args
        self.output = Path(args.output)
        self.seeds = [int(s) for s in _names(args.seeds)]
        self.ratios = _floats(args.ratios)
        self.criteria = _names(args.criteria)
        self.distill_criteria = _names(args.distill_criteria)
        for name in {*self.criteria, *self.distill_criteria}:
            if name not in CRITERIA_MODULES:
                raise LayerPruneError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA_MODULES)}")
        missing = [c for c in self.distill_criteria if c not in self.criteria]
        if missing:
            raise LayerPruneError(f"--distill-criteria {', '.join(missing)} must also be in --criteria")
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise LayerPruneError(f"--ratios must be fractions in (0, 1), got {args.ratios!r}")
        self.cells = Cells(self.output / "cells.jsonl")
        self.distill_tag = f"steps{args.distill_steps}-bs{args.distill_batch_size}-lr{args.learning_rate:g}" + (
            f"-n{args.distill_samples}" if args.distill_samples else ""
        )
        self.started = time.time()
        self._pipe = None

    # -- models and data (loaded on first use, so --report-only needs nothing) ------------------------------------
    def setup(self) -> None:
        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.importance import ScanSettings
        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        self.pipe = load_pipeline(self.args.model)
        self.pipe.set_progress_bar_config(disable=True)
        d = generation_defaults(self.args.model, self.pipe)
        self.settings = ScanSettings(
            num_inference_steps=self.args.num_inference_steps or d["num_inference_steps"],
            guidance_scale=d["guidance_scale"],
            resolution=d["resolution"],
            max_sequence_length=d["max_sequence_length"],
            batch_size=self.args.batch_size,
        )
        self.scorer = load_scorer("toy")
        self.train_captions = world.captions("train")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        length = self.settings.max_sequence_length
        self.embeds = encode_prompts(self.pipe, self.captions, max_sequence_length=length)
        self.negative = encode_prompts(self.pipe, [""], max_sequence_length=length)
        self.depth = len(self.pipe.transformer.transformer_blocks)

    def judge(self, pipe, dropped, seed: int) -> dict:
        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.modeling import generate_from_embeddings
        from diffusers_layerprune.toy.judge import judge

        start = time.perf_counter()
        s = self.settings
        seeds = [self.args.eval_seed + 1000 * seed + i for i in range(len(self.captions))]
        with skip_blocks(pipe.transformer, list(dropped)):
            images = generate_from_embeddings(
                pipe,
                *self.embeds,
                self.negative,
                seeds=seeds,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                resolution=s.resolution,
                max_sequence_length=s.max_sequence_length,
                batch_size=self.args.batch_size,
            )
        report = judge(images, self.captions)
        return {
            "accuracy": {m: float(report.accuracy[m]) for m in METRICS},
            "toy_score": float(self.scorer(images, self.captions).mean()),
            "seconds": time.perf_counter() - start,
        }

    def cell(self, stage: str, seed: int, dropped, compute, variant: str = "") -> dict:
        key = cell_key(stage, seed, dropped, variant)
        record = self.cells.get(key)
        if record is None:
            fields = {
                "stage": stage,
                "seed": seed,
                "dropped": list(dropped),
                **({"variant": variant} if variant else {}),
            }
            record = self.cells.put(key, {**fields, **compute()})
            a = record["accuracy"]
            print(
                f"  {stage:<9} seed {seed} drop {list(dropped)}: all four {100 * a['overall']:.1f}%, "
                f"toy score {record['toy_score']:.3f} ({record['seconds']:.0f} s)",
                flush=True,
            )
        return record

    # -- step 1: importance -------------------------------------------------------------------------------------
    def importances(self, seed: int) -> dict:
        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan, LayerImportance, compute_importance

        folder = self.output / f"seed-{seed}" / "importance"
        prompts = random.Random(seed).sample(self.train_captions, self.args.score_prompts)
        scan = ImportanceScan(
            self.pipe,
            PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
            self.settings.__class__(**{**self.settings.__dict__, "seed": 1000 * seed}),
            model_id=self.args.model,
            scorer=self.scorer,
            scorer_name="toy",
        )
        result = {}
        for name in self.criteria:
            path = folder / f"{name}.json"
            if path.is_file():
                result[name] = LayerImportance.load(path)
                continue
            start = time.perf_counter()
            result[name] = compute_importance(name, scan)
            result[name].save(path)
            seconds = time.perf_counter() - start
            self.cells.put(f"score|seed={seed}|{name}", {"stage": "score", "seed": seed, "seconds": seconds})
            print(f"  seed {seed}: {name} scored in {seconds:.0f} s", flush=True)
        return result

    def plans(self, importances: dict) -> dict:
        from diffusers_layerprune.importance import plan_blocks

        plans = {}
        for ratio in self.ratios:
            k = blocks_to_drop(ratio, self.depth)
            plans[ratio] = {name: sorted(plan_blocks(imp, k, "one_shot")) for name, imp in importances.items()}
            if "angular_distance" in importances:
                plans[ratio][SPAN] = sorted(plan_blocks(importances["angular_distance"], k, "span"))
        return plans

    # -- step 3: distillation ---------------------------------------------------------------------------------
    def distilled(self, seed: int, dropped) -> dict:
        import shutil

        from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline

        tag = "drop-" + "-".join(map(str, dropped))
        folder = self.output / f"seed-{seed}" / "models" / self.distill_tag / tag
        pruned, final = folder / "pruned", folder / "distilled"
        if not (pruned / "model_index.json").is_file():
            save_pruned_pipeline(prune_pipeline(self.pipe, pruned_layers=list(dropped)), pruned, overwrite=True)
        train_seconds = 0.0
        if not (final / "model_index.json").is_file():
            resume = ["--resume_from_checkpoint", "latest"] if any(final.glob("checkpoint-*")) else []
            steps = self.args.distill_steps
            cmd = [
                sys.executable, str(TRAIN_SCRIPT),
                "--teacher_model", self.args.model,
                "--student_model", str(pruned),
                "--output_dir", str(final),
                "--max_train_steps", str(steps),
                "--train_batch_size", str(self.args.distill_batch_size),
                "--learning_rate", str(self.args.learning_rate),
                "--lr_scheduler", "cosine",
                "--lr_warmup_steps", str(max(1, steps // 20)),
                "--checkpointing_steps", str(max(1, steps // 2)),
                "--checkpoints_total_limit", "1",
                "--seed", str(seed),
                "--report_to", "none",
                *(["--max_train_samples", str(self.args.distill_samples)] if self.args.distill_samples else []),
                *resume,
            ]  # fmt: skip
            start = time.perf_counter()
            print(f"  distilling {tag} (seed {seed}, {steps} steps)", flush=True)
            log = folder / "train.log"
            with log.open("a") as f:
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
            if code != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                raise RuntimeError(f"distillation failed ({log}):\n{tail}")
            train_seconds = time.perf_counter() - start
            print(f"  distilled {tag} in {train_seconds:.0f} s", flush=True)
        student = load_pipeline(str(final))
        student.set_progress_bar_config(disable=True)
        result = self.judge(student, [], seed)
        result["train_seconds"] = train_seconds
        result["seconds"] += train_seconds
        if not self.args.keep_models:
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def run(self) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging

        # Scoped, not process-wide: main() runs in-process in the tests, and torch.set_grad_enabled(False) left
        # autograd off for whatever trained next.
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # the saved pruned config's extra keys warn on stock loading
        try:
            with torch.no_grad():
                self._run()
        finally:
            diffusers_logging.set_verbosity(verbosity)

    def _run(self) -> None:
        from diffusers_layerprune.errors import LayerPruneError

        self.setup()
        s = self.settings
        # Everything a scored or judged cell depends on, besides its seed, blocks and distillation settings: a
        # folder holds one such setting, so reused cells are always comparable.
        fingerprint = {
            "model": self.args.model,
            "score_prompts": self.args.score_prompts,
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale,
            "resolution": s.resolution,
            "max_sequence_length": s.max_sequence_length,
            "eval_prompts": len(self.captions),
            "eval_seed": self.args.eval_seed,
            "num_layers": self.depth,
        }
        path = self.output / "settings.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [f"{k} {saved.get(k)} -> {v}" for k, v in fingerprint.items() if saved.get(k) != v]
            if changed:
                raise LayerPruneError(
                    f"{self.output} holds cells made with other settings ({'; '.join(changed)}); "
                    "give another --output, or the same settings"
                )
        _write_atomic(path, json.dumps(fingerprint, indent=2) + "\n")
        all_plans = {}
        # Before distillation for every seed first (cheap), then the distillation runs (the long part).
        for seed in self.seeds:
            print(f"seed {seed}: scoring {len(self.criteria)} criteria", flush=True)
            plans = self.plans(self.importances(seed))
            all_plans[seed] = plans
            self.cell("teacher", seed, [], lambda s=seed: self.judge(self.pipe, [], s))
            for by_criterion in plans.values():
                for dropped in by_criterion.values():
                    self.cell("pruned", seed, dropped, lambda d=dropped, s=seed: self.judge(self.pipe, d, s))
        for seed in self.seeds:
            for by_criterion in all_plans[seed].values():
                for name in self.distill_criteria:
                    dropped = by_criterion[name]
                    self.cell(
                        "distilled", seed, dropped, lambda d=dropped, s=seed: self.distilled(s, d), self.distill_tag
                    )
        self.plans_by_seed = all_plans

    # -- report ---------------------------------------------------------------------------------------------------
    def collect(self) -> dict:
        """Per-seed cells arranged by stage, ratio and criterion; plans come from the saved importance files."""
        from diffusers_layerprune.importance import LayerImportance, plan_blocks

        per_seed: dict = {}
        plans_out: dict = {}
        teacher_cells = []
        depth = None
        for seed in self.seeds:
            folder = self.output / f"seed-{seed}" / "importance"
            importances = {n: LayerImportance.load(folder / f"{n}.json") for n in self.criteria if (folder / f"{n}.json").is_file()}  # fmt: skip
            if not importances:
                continue
            depth = len(next(iter(importances.values())).values)
            teacher = self.cells.get(cell_key("teacher", seed, []))
            if teacher:
                teacher_cells.append(teacher)
            for ratio in self.ratios:
                k = blocks_to_drop(ratio, depth)
                plans = {n: sorted(plan_blocks(imp, k, "one_shot")) for n, imp in importances.items()}
                if "angular_distance" in importances:
                    plans[SPAN] = sorted(plan_blocks(importances["angular_distance"], k, "span"))
                r = f"{ratio:.2f}"
                for name, dropped in plans.items():
                    plans_out.setdefault(name, {}).setdefault(r, {})[str(seed)] = dropped
                    for stage in ("pruned", "distilled"):
                        variant = self.distill_tag if stage == "distilled" else ""
                        record = self.cells.get(cell_key(stage, seed, dropped, variant))
                        if record and (stage == "pruned" or name in self.distill_criteria):
                            per_seed.setdefault(stage, {}).setdefault(r, {}).setdefault(name, {})[seed] = record
        settings_file = self.output / "settings.json"
        if not teacher_cells or not settings_file.is_file():
            raise SystemExit(f"no finished cells under {self.output}; run without --report-only first")
        measured = json.loads(settings_file.read_text())
        teacher = {
            "overall": mean_std([c["accuracy"]["overall"] for c in teacher_cells]),
            "toy_score": mean_std([c["toy_score"] for c in teacher_cells]),
        }
        used = {id(c) for c in teacher_cells} | {
            id(c) for by_ratio in per_seed.values() for by_c in by_ratio.values() for cells in by_c.values() for c in cells.values()
        }  # fmt: skip
        used_seeds = {c["seed"] for c in teacher_cells}
        seconds = sum(
            r.get("seconds", 0)
            for r in self.cells.records.values()
            if id(r) in used or (r.get("stage") == "score" and r["seed"] in used_seeds)
        )
        return {
            "model": self.args.model,
            "num_layers": depth,
            "seeds": [s for s in self.seeds if any(str(s) in v for p in plans_out.values() for v in p.values())],
            "criteria": self.criteria,
            "distill_criteria": self.distill_criteria,
            "ratios": self.ratios,
            "eval_prompts": measured["eval_prompts"],
            "settings": {
                "score_prompts": measured["score_prompts"],
                "num_inference_steps": measured["num_inference_steps"],
                "guidance_scale": measured["guidance_scale"],
                "resolution": measured["resolution"],
                "distill_steps": self.args.distill_steps,
                "distill_batch_size": self.args.distill_batch_size,
                "learning_rate": self.args.learning_rate,
                "eval_seed": measured["eval_seed"],
            },
            "teacher": teacher,
            "table": aggregate(per_seed),
            "per_seed": per_seed,
            "plans": plans_out,
            "claims": check_claims(per_seed, {k: v["mean"] for k, v in teacher.items()}),
            "cell_seconds": seconds,
            "total_minutes": seconds / 60,
            "machine": f"{os.cpu_count()}-core CPU",
            "command": "python benchmarks/reproduce_paper.py" + _non_default_args(self.args),
        }

    def report(self) -> dict:
        result = self.collect()
        results = Path(self.args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(results, json.dumps(result, indent=2) + "\n")
        doc = Path(self.args.doc)
        write_plot(result, doc.with_suffix(".png"))
        _write_atomic(doc, render_results(result))
        print(f"wrote {results}, {doc} and {doc.with_suffix('.png')}")
        for claim in result["claims"]:
            print(f"  {claim['verdict']:>13}: {claim['claim']}")
        return result


def _non_default_args(args) -> str:
    defaults = vars(parse_args([]))
    parts = []
    for name, value in vars(args).items():
        if name == "report_only" or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return "".join(" " + shlex.quote(p) for p in parts)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    from diffusers_layerprune.errors import LayerPruneError

    try:
        experiment = Experiment(args)
    except LayerPruneError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.report_only:
        try:
            experiment.run()
        except LayerPruneError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"{experiment.cells.computed} cells computed, {len(experiment.cells.records)} in {experiment.cells.path}")
    experiment.report()
    print(f"done in {(time.time() - experiment.started) / 60:.1f} min")


if __name__ == "__main__":
    main()
