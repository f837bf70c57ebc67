"""docs/results.md and docs/results.png from the experiment's result (the JSON written by :mod:`paper.run`).
The page's prose lives in ``results.md.in`` beside this file; this module fills in its numbers and tables."""

from __future__ import annotations

from pathlib import Path
from string import Template

from .claims import CRITERIA, GOALS, LEARNABLE, RESTORED, SPAN, blocks_to_drop

TEMPLATE = Path(__file__).with_name("results.md.in")


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
        reference = claim.get("reference", "preference")
        lost = [c for c in claim["comparisons"] if not c["wins"] and not c["ties"]]
        tied = [c for c in claim["comparisons"] if c["ties"]]
        lines.append(
            f"  {reference.capitalize()} has the higher mean accuracy in {claim['won']} of {claim['total']} (ratio, rival) "
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
            lines.append(f"  Where {reference} loses: {where(lost)}.")
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


def _stage_table(table: dict, ratios: list[str], depth: int, stage: str, metric: str, percent: bool) -> list[str]:
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


def _section(table: dict, ratios: list[str], depth: int, title: str, stage: str) -> str:
    lines = [f"## {title}", "", "Judge accuracy, all four attributes right (%):", ""]
    lines += [*_stage_table(table, ratios, depth, stage, "overall", True), "", "Toy preference score:", ""]
    lines += [*_stage_table(table, ratios, depth, stage, "toy_score", False), ""]
    return "\n".join(lines)


def _per_attribute(table: dict, ratios: list[str], depth: int) -> str:
    out = []
    for ratio in ratios:
        out += [f"{_ratio_label(ratio, depth)} removed:", "", "| criterion | colour | position | shape | size |"]
        out.append("|---|---|---|---|---|")
        for criterion, row in table["pruned"][ratio].items():
            attributes = ("colour", "position", "shape", "size")
            out.append(f"| {criterion} | " + " | ".join(f"{100 * row[m]['mean']:.1f}" for m in attributes) + " |")
        out.append("")
    return "\n".join(out)


def _blocks_removed(result: dict, ratios: list[str], depth: int) -> str:
    seeds = result["seeds"]
    out = ["| criterion | " + " | ".join(_ratio_label(r, depth) for r in ratios) + " |"]
    out.append("|---" * (len(ratios) + 1) + "|")
    for criterion in [*CRITERIA, SPAN]:
        plans = result["plans"].get(criterion)
        if not plans:
            continue
        cells = [" / ".join(str(plans[r][str(s)]) for s in seeds if str(s) in plans.get(r, {})) for r in ratios]
        out.append(f"| {criterion} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def render_results(result: dict) -> str:
    table, depth, settings = result["table"], result["num_layers"], result["settings"]
    ratios = sorted(table.get("pruned", {}), key=float)
    teacher, seeds = result["teacher"], result["seeds"]
    fields = {
        "minutes": f"{result['total_minutes']:.0f}",
        "machine": result["machine"],
        "command": result["command"],
        "seeds": ", ".join(map(str, seeds)),
        "score_prompts": settings["score_prompts"],
        "criteria": ", ".join(result["criteria"]),
        "span": SPAN,
        "num_inference_steps": settings["num_inference_steps"],
        "guidance_scale": settings["guidance_scale"],
        "resolution": settings["resolution"],
        "ratios": ", ".join(_ratio_label(r, depth) for r in ratios),
        "all_eval": "all " if result["eval_prompts"] == 216 else "",
        "eval_prompts": result["eval_prompts"],
        "distill_criteria": ", ".join(result["distill_criteria"]),
        "distill_steps": settings["distill_steps"],
        "distill_batch_size": settings["distill_batch_size"],
        "learning_rate": settings["learning_rate"],
        "teacher_overall": f"{100 * teacher['overall']['mean']:.1f}% ± {100 * teacher['overall']['std']:.1f}",
        "teacher_toy_score": f"{teacher['toy_score']['mean']:.3f} ± {teacher['toy_score']['std']:.3f}",
        "ranking": "\n".join(_ranking_lines(result)),
        "restored": f"{RESTORED:.0%}",
        "claims": "\n".join(_claims_markdown(result)),
        "before_distillation": _section(table, ratios, depth, "Before distillation", "pruned"),
        "after_distillation": _section(
            table,
            ratios,
            depth,
            f"After distillation ({settings['distill_steps']} steps; before → after ± std)",
            "distilled",
        ),
        "per_attribute": _per_attribute(table, ratios, depth),
        "blocks_removed": _blocks_removed(result, ratios, depth),
        "seed_count": len(seeds),
        "seed_plural": "s" if len(seeds) > 1 else "",
        "budget": _budget_section(result),
        "cost": _cost_section(result),
        "learnable": _learnable_line(result),
        "budget_limit": _budget_limit(result),
    }
    return Template(TEMPLATE.read_text()).substitute(fields)


def _budget_section(result: dict) -> str:
    """The distillation budget curve: a table of the best criterion after every budget, the share of the teacher it
    keeps, and the goal; empty when the run had no budget curve."""
    budget = result.get("budget")
    if not budget:
        return ""
    depth, teacher = result["num_layers"], result["teacher"]["overall"]["mean"]
    by_seed = dict(zip(result.get("seeds", []), result["teacher"]["overall"].get("values", []), strict=False))

    def kept(row: dict) -> float:
        """The share of the teacher's accuracy kept, against the teacher on the same seeds (the same noise)."""
        same = [by_seed[s] for s in row["seeds"] if s in by_seed]
        return row["overall"]["mean"] / (sum(same) / len(same) if same else teacher)

    steps = sorted({int(n) for entry in budget.values() for n in entry["steps"]})
    lines = [
        "## Distillation budget",
        "",
        "At each ratio below, the criterion with the best mean accuracy after "
        f"{result['settings']['distill_steps']} steps was distilled again with longer budgets (the same recipe: "
        "cosine schedule over the whole run, 5% warm-up) and judged on the same held-out captions. Cells: all four "
        "right, mean ± std over the seeds (n), and the share of the teacher's accuracy kept (the teacher judged on "
        f"the same seeds: {100 * teacher:.1f}% on all of them).",
        "",
        "| removed | criterion | " + " | ".join(f"{n} steps" for n in steps) + " | goal |",
        "|---" * (len(steps) + 3) + "|",
    ]
    verdicts = []
    for r, entry in sorted(budget.items(), key=lambda item: float(item[0])):
        cells = []
        for n in steps:
            row = entry["steps"].get(str(n))
            if row is None:
                cells.append("-")
                continue
            m = row["overall"]
            text = f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} (n={m['n']}; {kept(row):.0%})"
            first = entry["steps"][str(steps[0])]
            if n != steps[0] and row["seeds"] != first["seeds"]:  # fewer seeds: the shortest budget on the same ones
                same = [v for s, v in zip(first["seeds"], first["overall"]["values"], strict=True) if s in row["seeds"]]
                if same:
                    text += f"; {steps[0]} steps on the same seed{'s' if len(same) > 1 else ''}: {100 * sum(same) / len(same):.1f}"
            cells.append(text)
        goal = GOALS.get(r)
        goal_text = f"≥ {goal:.0%} of the teacher ({100 * goal * teacher:.1f}%)" if goal else "-"
        lines.append(f"| {_ratio_label(r, depth)} | {entry['criterion']} | " + " | ".join(cells) + f" | {goal_text} |")
        if goal and entry["steps"]:
            done = {int(n): kept(row) for n, row in entry["steps"].items()}
            reached = [n for n in sorted(done) if done[n] >= goal]
            best_n = max(done, key=done.get)
            if reached:
                verdicts.append(
                    f"- {_ratio_label(r, depth)} removed: the goal ({goal:.0%} of the teacher) is reached after "
                    f"{reached[0]} steps ({done[reached[0]]:.0%}, n={entry['steps'][str(reached[0])]['overall']['n']})."
                )
            else:
                verdicts.append(
                    f"- {_ratio_label(r, depth)} removed: the goal ({goal:.0%} of the teacher) is not reached by "
                    f"{max(done)} steps; the best budget keeps {done[best_n]:.0%} ({best_n} steps)."
                )
    teacher_train = result.get("teacher_train")
    if teacher_train:
        train_by_seed = dict(zip(teacher_train.get("seeds", []), teacher_train["values"], strict=False))
        lines += [
            "",
            "The same models judged on as many *training* captions (the ones distillation trained on), same noise "
            "seeds; each cell: accuracy and share of the teacher kept there (teacher on the same seeds), then the "
            "same on the held-out captions. A student that keeps much more of the teacher on its training captions "
            "than on held-out ones fits its prompts without generalising (a data limit); one that keeps less there "
            "is not limited by its prompts:",
            "",
            "| removed | criterion | " + " | ".join(f"{n} steps" for n in steps) + " |",
            "|---" * (len(steps) + 2) + "|",
        ]
        for r, entry in sorted(budget.items(), key=lambda item: float(item[0])):
            cells = []
            for n in steps:
                row = entry["steps"].get(str(n), {})
                m = row.get("train_overall")
                same = [train_by_seed[s] for s in row.get("train_seeds", []) if s in train_by_seed]
                if m is None or not same:
                    cells.append("-")
                    continue
                on_train = m["mean"] / (sum(same) / len(same))
                # held-out on the seeds judged on training captions too
                held = [
                    v for s, v in zip(row["seeds"], row["overall"]["values"], strict=True) if s in row["train_seeds"]
                ]
                held_row = {"seeds": row["train_seeds"], "overall": {"mean": sum(held) / len(held)}}
                cells.append(
                    f"train {100 * m['mean']:.1f} ({on_train:.0%}), held-out {100 * held_row['overall']['mean']:.1f} "
                    f"({kept(held_row):.0%}), n={m['n']}"
                )
            lines.append(f"| {_ratio_label(r, depth)} | {entry['criterion']} | " + " | ".join(cells) + " |")
    lines += _ablation_lines(result, budget, depth)
    lines += ["", *verdicts, ""] if verdicts else [""]
    lines += ["![accuracy against distillation steps](results_budget.png)", ""]
    return "\n".join(lines) + "\n"


def _ablation_lines(result: dict, budget: dict, depth: int) -> list[str]:
    """The ablations: the best criterion's {distill_steps}-step run with loss terms removed or the learning rate
    scaled, against the recipe's run on the same seeds."""
    names = sorted({a for entry in budget.values() for a in entry.get("ablations", {})})
    if not names:
        return []
    n = result["settings"]["distill_steps"]
    labels = {a: entry["ablations"][a]["label"] for entry in budget.values() for a in entry.get("ablations", {})}
    lines = [
        "",
        f"What limits it, the loss terms and the learning rate: the same {n}-step runs with terms of the distillation "
        "loss removed (every term weighs 1.0 in the recipe: task, output KD, variance, block features) or with the "
        f"learning rate ({result['settings']['learning_rate']:g}, cosine) scaled. Cells: all four right, mean ± std "
        "(n), and the difference to the recipe's run on the same seeds:",
        "",
        f"| removed | criterion | every term ({n} steps) | " + " | ".join(labels[a] for a in names) + " |",
        "|---" * (len(names) + 3) + "|",
    ]
    for r, entry in sorted(budget.items(), key=lambda item: float(item[0])):
        base = entry["steps"].get(str(n))
        if base is None or not entry.get("ablations"):
            continue
        by_seed = dict(zip(base["seeds"], base["overall"]["values"], strict=True))
        cells = []
        for a in names:
            row = entry["ablations"].get(a)
            if row is None:
                cells.append("-")
                continue
            m = row["overall"]
            same = [by_seed[s] for s in row["seeds"] if s in by_seed]
            diff = m["mean"] - sum(same) / len(same) if same else float("nan")
            cells.append(f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f} (n={m['n']}; {100 * diff:+.1f})")
        m = base["overall"]
        lines.append(
            f"| {_ratio_label(r, depth)} | {entry['criterion']} | {100 * m['mean']:.1f} ± {100 * m['std']:.1f} "
            f"(n={m['n']}) | " + " | ".join(cells) + " |"
        )
    return lines


def _cost_section(result: dict) -> str:
    """What one seed's selection cost, per criterion (mean over the seeds)."""
    costs = result.get("selection_cost")
    if not costs:
        return ""
    s, depth = result["settings"], result["num_layers"]
    lines = [
        "## What each selection costs",
        "",
        "Per seed, mean over the seeds, on the machine of this run. The preference criterion generates every "
        f"prompt's image with each block removed: ({depth} + 1) x {s['score_prompts']} = "
        f"{(depth + 1) * s['score_prompts']} images of {s['num_inference_steps']} sampler steps. The learnable "
        f"selection is trained once per removal count: {s.get('learn_steps')} steps of {s.get('learn_batch_size')} "
        f"prompts at the scan's probe timesteps against the full model's predictions on the same "
        f"{s['score_prompts']} captions (no image is generated); the similarity criteria read hidden states of the "
        "same scan.",
        "",
        "| criterion | seconds |",
        "|---|---|",
    ]
    for name, row in costs.items():
        label = f"{LEARNABLE} (remove {row['remove']})" if name.startswith(LEARNABLE) else name
        lines.append(f"| {label} | {row['seconds']:.0f} |")
    return "\n".join(lines) + "\n\n"


def write_budget_plot(result: dict, path: Path) -> None:
    """All-four-right accuracy against distillation steps for each budget ratio, with the teacher and the goals."""
    budget = result.get("budget")
    if not budget:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth, teacher = result["num_layers"], result["teacher"]["overall"]["mean"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(100 * teacher, color="black", lw=1, ls=":", label=f"teacher ({depth} blocks)")
    for colour, (r, entry) in zip(plt.get_cmap("tab10").colors, sorted(budget.items()), strict=False):
        points = sorted((int(n), row["overall"]) for n, row in entry["steps"].items())
        if not points:
            continue
        ax.errorbar(
            [n for n, _ in points],
            [100 * m["mean"] for _, m in points],
            yerr=[100 * m["std"] for _, m in points],
            marker="o",
            capsize=3,
            color=colour,
            label=f"{_ratio_label(r, depth)} removed, {entry['criterion']}",
        )
        for n, m in points:  # seeds differ between budgets: say how many each point has
            ax.annotate(f"n={m['n']}", (n, 100 * m["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if r in GOALS:
            ax.axhline(100 * GOALS[r] * teacher, color=colour, lw=1, ls="--", label=f"goal: {GOALS[r]:.0%} of teacher")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    steps = sorted({int(n) for e in budget.values() for n in e["steps"]})
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.set_xlabel("distillation steps")
    ax.set_ylabel("held-out, all four right (%), mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _learnable_line(result: dict) -> str:
    if LEARNABLE not in result["criteria"]:
        return ""
    s = result["settings"]
    return (
        f"\n- `{LEARNABLE}` (TinyFusion, Fang et al., CVPR 2025): a categorical keep-mask per group of blocks, sampled "
        "with a straight-through Gumbel-softmax (temperature 4 -> 0.1) and trained jointly with a rank-4 LoRA that "
        "simulates the recovery, against the full model's predictions; trained separately for each removal count "
        f"({s.get('learn_steps')} steps of {s.get('learn_batch_size')} prompts, the seed's {s['score_prompts']} "
        "scoring captions, training seed = the seed)."
    )


def _budget_limit(result: dict) -> str:
    budget = result.get("budget")
    if not budget:
        return "One distillation budget, full fine-tuning only (LoRA at this scale: docs/distillation.md)."
    steps = sorted({int(n) for e in budget.values() for n in e["steps"]})
    return (
        f"Every criterion got the same {result['settings']['distill_steps']} distillation steps; the longer budgets "
        f"({', '.join(str(n) for n in steps if n != result['settings']['distill_steps'])}) only the best criterion, "
        "at the budget ratios"
        + (
            f", as did the ablations of the loss terms and the learning rate ({result['settings']['distill_steps']} steps)"
            if any(e.get("ablations") for e in budget.values())
            else ""
        )
        + ". Full fine-tuning only (LoRA at this scale: docs/distillation.md)."
    )
