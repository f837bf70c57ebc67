"""The stacking study's models and axes, its plan choice, the teacher-relative columns and the verdict: pure
functions of the cells, so ``--report-only`` needs no model."""

from __future__ import annotations

import math

# model -> (result file, the paper grid's result the depth plans come from, page title)
MODELS = {
    "toy": ("stack_toy.json", "reproduce_paper.json", "PixArt toy (`toy`)"),
    "toy-flux": ("stack_toy_flux.json", "reproduce_paper_flux.json", "Flux toy (`toy-flux`)"),
}
RATIOS = {"25%": "0.25", "40%": "0.40"}
CACHES = ("none", "first_block", "taylorseer", "magcache")
WEIGHTS = ("fp32", "int8", "gguf_q8_0")
GOAL_FLOPS, GOAL_POINTS = 3.0, 2.0  # the goal: 3x fewer transformer FLOPs within 2 points of the teacher


def best_plans(paper: dict) -> dict[str, dict]:
    """``{depth: {"dropped": [...], "selection": name, "paper_distilled": accuracy}}`` for the teacher and each ratio
    of :data:`RATIOS`: the selection with the best distilled mean accuracy in the paper grid ``paper`` (PixArt's
    criteria grid, or the Flux page's stack plans), its seed-0 plan."""
    out = {"full": {"dropped": [], "selection": "teacher", "paper_distilled": None}}
    for depth, ratio in RATIOS.items():
        options = []  # (mean distilled accuracy, selection name, seed-0 plan)
        if "plans" in paper:  # reproduce_paper.json: table.distilled[ratio][criterion], plans[criterion][ratio][seed]
            for name, cell in paper["table"]["distilled"][ratio].items():
                options.append((cell["overall"]["mean"], name, paper["plans"][name][ratio]["0"]))
        else:  # reproduce_paper_flux.json: table[ratio][criterion][stack plan] with its distilled judge
            if ratio not in paper["table"]:  # a ratio the Flux page did not run: that depth is left out
                print(f"the paper grid has no {depth} row: {depth} is left out", flush=True)
                continue
            for criterion, by_plan in paper["table"][ratio].items():
                for plan, cell in by_plan.items():
                    if cell.get("distilled"):
                        options.append(
                            (cell["distilled"]["overall"]["mean"], f"{criterion}, {plan}", cell["dropped"]["0"])
                        )
        if not options:
            raise SystemExit(f"the paper grid has no distilled model at {depth}; run reproduce_paper.py first")
        accuracy, name, dropped = max(options, key=lambda o: o[0])  # first listed on ties (max keeps the first)
        out[depth] = {"dropped": sorted(dropped), "selection": name, "paper_distilled": accuracy}
    return out


def paired_points_lost(teacher: str, cell: str, n_captions: int) -> tuple[float, tuple[float, float]]:
    """Points lost against the teacher on the same images (``"0101.."`` verdict strings, image j of caption
    j % n_captions) and its 95% interval over captions: each caption's seeds averaged, then mean +- 1.96 SE."""
    diffs = [0.0] * n_captions
    counts = [0] * n_captions
    for j, (t, c) in enumerate(zip(teacher, cell, strict=True)):
        diffs[j % n_captions] += (t == "1") - (c == "1")
        counts[j % n_captions] += 1
    per_caption = [d / c for d, c in zip(diffs, counts, strict=True) if c]
    n = len(per_caption)
    mean = sum(per_caption) / n
    var = sum((x - mean) ** 2 for x in per_caption) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return 100 * mean, (100 * (mean - half), 100 * (mean + half))


def derive(cells: list[dict], n_captions: int, steps: int) -> None:
    """Add the teacher-relative columns to ``cells`` in place."""
    by = {(c["depth"], c["cache"], c["weights"], c["steps"]): c for c in cells}
    teacher = by["full", "none", "fp32", steps]
    for c in cells:
        if c["weights"] != "fp32":  # the counter does not see quanto's kernels: the float cell's count
            c["flops_counted"] = c["flops_per_image"]
            c["flops_per_image"] = by[c["depth"], c["cache"], "fp32", c["steps"]]["flops_per_image"]
        c["flops_saving"] = teacher["flops_per_image"] / c["flops_per_image"]
        if c.get("cpu_seconds_per_image") and teacher.get("cpu_seconds_per_image"):
            c["latency_ratio"] = c["cpu_seconds_per_image"] / teacher["cpu_seconds_per_image"]
        else:
            c["latency_ratio"] = c["seconds_per_image"] / teacher["seconds_per_image"]
        c["points_lost"], c["points_lost_ci95"] = paired_points_lost(teacher["correct"], c["correct"], n_captions)
        c["cache_work_fraction"] = (
            by[c["depth"], c["cache"], "fp32", c["steps"]]["flops_per_image"]
            / by[c["depth"], "none", "fp32", c["steps"]]["flops_per_image"]
        )


def teacher_of(result: dict) -> dict:
    steps = result["settings"]["num_inference_steps"]
    return next(
        c
        for c in result["cells"]
        if (c["depth"], c["cache"], c["weights"], c["steps"]) == ("full", "none", "fp32", steps)
    )


def verdict(result: dict) -> list[str]:
    """The generated verdict lines of one model's result."""
    cells = result["cells"]
    teacher = teacher_of(result)
    steps = teacher["steps"]
    within = [c for c in cells if c["points_lost"] <= GOAL_POINTS]
    best = max(within, key=lambda c: c["flops_saving"])
    lo, hi = best["points_lost_ci95"]
    lines = [
        f"- Teacher: {100 * teacher['accuracy']:.1f}% all four right ({teacher['images']} images), "
        f"{teacher['flops_per_image'] / 1e9:.3f} GFLOP per image (transformer).",
        f"- Largest FLOP saving within {GOAL_POINTS:.0f} points of the teacher: {best['flops_saving']:.2f}x "
        f"({name(best)}; {100 * best['accuracy']:.1f}%, {best['points_lost']:+.1f} points, 95% interval "
        f"{lo:+.1f} to {hi:+.1f}). The goal ({GOAL_FLOPS:.0f}x within {GOAL_POINTS:.0f} points) is "
        + ("met." if best["flops_saving"] >= GOAL_FLOPS else "**not met**.")
        + f" {reach(cells)}",
        f"- Most saving per point lost (cells losing more than {GOAL_POINTS:.0f} points, by FLOP saving minus 1 per "
        f"point): {per_point(cells)}.",
    ]
    gains = []
    for cache in caches_of(cells)[1:]:
        full = by_key(cells, "full", cache, "fp32", steps)
        if full is None:
            continue
        pruned = [by_key(cells, d, cache, "fp32", steps) for d in result["plans"] if d != "full"]
        gains.append(
            f"{cache} keeps {100 * full['cache_work_fraction']:.0f}% of the full model's work"
            + "".join(f", {100 * p['cache_work_fraction']:.0f}% of the {p['depth']}-pruned one's" for p in pruned if p)
        )
    lines.append(
        "- Do depth and caching add up? The FLOP savings multiply when a cache keeps the same share of the work "
        "after pruning: " + "; ".join(gains) + "."
    )
    losses = []
    for depth in (d for d in result["plans"] if d != "full"):
        pruned = by_key(cells, depth, "none", "fp32", steps)
        for cache in caches_of(cells)[1:]:
            cached, both = by_key(cells, "full", cache, "fp32", steps), by_key(cells, depth, cache, "fp32", steps)
            if pruned and cached and both:
                losses.append(
                    f"{depth} + {cache}: {both['points_lost']:+.1f} measured, "
                    f"{pruned['points_lost'] + cached['points_lost']:+.1f} if the losses added"
                )
    if losses:
        lines.append("- Points lost by depth and cache together (float32): " + "; ".join(losses) + ".")
    return lines


def caches_of(cells: list[dict]) -> list[str]:
    """The caches measured, in :data:`CACHES` order, then any MagCache variant (``magcache@T``)."""
    seen = list(dict.fromkeys(c["cache"] for c in cells))
    return [c for c in CACHES if c in seen] + [c for c in seen if c not in CACHES]


def by_key(cells, depth, cache, weights, steps):
    return next(
        (c for c in cells if (c["depth"], c["cache"], c["weights"], c["steps"]) == (depth, cache, weights, steps)),
        None,
    )


def name(cell: dict) -> str:
    return f"{cell['depth']}, {cell['cache']}, {cell['weights']}, {cell['steps']} steps"


def reach(cells: list[dict]) -> str:
    """The most accurate cell at or beyond the goal's FLOP saving, or the largest saving measured."""
    far = [c for c in cells if c["flops_saving"] >= GOAL_FLOPS]
    if not far:
        top = max(cells, key=lambda c: c["flops_saving"])
        return f"No cell reaches {GOAL_FLOPS:.0f}x; the largest saving is {top['flops_saving']:.2f}x ({name(top)})."
    best = max(far, key=lambda c: c["accuracy"])
    return (
        f"The best cell at {GOAL_FLOPS:.0f}x or more ({name(best)}, {best['flops_saving']:.2f}x) loses "
        f"{best['points_lost']:.1f} points."
    )


def per_point(cells: list[dict]) -> str:
    lossy = [c for c in cells if c["points_lost"] > GOAL_POINTS and c["flops_saving"] > 1]
    if not lossy:
        return "none"
    ranked = sorted(lossy, key=lambda c: -(c["flops_saving"] - 1) / c["points_lost"])[:3]
    return "; ".join(
        f"{name(c)}: {c['flops_saving']:.2f}x for {c['points_lost']:.1f} points "
        f"({100 * (c['flops_saving'] - 1) / c['points_lost']:.0f}% saving per point)"
        for c in ranked
    )
