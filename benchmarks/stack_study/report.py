"""The stacking study's generated section of docs/stacking.md and its plot docs/stacking.png."""

from __future__ import annotations

from pathlib import Path

from .claims import GOAL_FLOPS, GOAL_POINTS, MODELS, teacher_of, verdict

BEGIN, END = "<!-- stack_toy: begin -->", "<!-- stack_toy: end -->"


def distillation(result: dict) -> str:
    """How the pruned models of ``result`` were made, for the page."""
    steps = result["settings"].get("distill_steps")
    plans = result["plans"]
    chosen = ", ".join(f"{d}: {p['selection']} (drops {p['dropped']})" for d, p in plans.items() if p["dropped"])
    if result["settings"].get("distilled"):
        return f"pruned models distilled {steps} steps as in reproduce_paper.py; selections {chosen}"
    return f"pruned models **not distilled**; selections {chosen}"


def render_model(result: dict) -> list[str]:
    rows = [
        "| depth | blocks | cache | weights | steps | all four right (95% CI) | points lost (95% CI) | GFLOP / image | "
        "FLOP saving | cache keeps work | latency vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        low, high = c["ci95"]
        plo, phi = c["points_lost_ci95"]
        rows.append(
            f"| {c['depth']} | {c['blocks']} | {c['cache']} | {c['weights']} | {c['steps']} | "
            f"{100 * c['accuracy']:.1f}% ({100 * low:.0f}-{100 * high:.0f}) | {c['points_lost']:+.1f} "
            f"({plo:+.1f} to {phi:+.1f}) | {c['flops_per_image'] / 1e9:.3f} | {c['flops_saving']:.2f}x | "
            f"{100 * c['cache_work_fraction']:.0f}% | {c['latency_ratio']:.2f} |"
        )
    s = result["settings"]
    title = MODELS[result["model"]][2]
    gguf = result.get("gguf") or {}
    ratios = "; ".join(f"{d}: {' '.join(f'{r:.2f}' for r in v)}" for d, v in (result.get("mag_ratios") or {}).items())
    return [
        f"### {title}",
        "",
        f"{result['captions']} held-out captions x {result['seeds_per_caption']} noise seeds "
        f"({result['captions'] * result['seeds_per_caption']} images per cell), {s['num_inference_steps']} steps, "
        f"guidance {s['guidance_scale']}, {result['machine']}; {distillation(result)}. "
        f"FirstBlockCache threshold {s['fbc_threshold']}; TaylorSeer interval 2 from step 2; MagCache threshold "
        f"{s['mag_threshold']} (`magcache@T`: threshold T; at most 3 skips in a row, none in the first 20% of "
        "steps), ratios calibrated on "
        f"{s['calib_prompts']} training captions per model (int8 cells use the float model's ratios). "
        f"Measured in {result['cpu_minutes']:.0f} CPU-minutes (cells only).",
        "",
        *rows,
        "",
        "- GGUF Q8_0: "
        + (
            "measured."
            if gguf.get("available")
            else f"N/A, `layerprune export` refuses the model: {gguf.get('reason', 'not checked')}"
        ),
        f"- MagCache ratios (step 0..{s['num_inference_steps'] - 1}): {ratios}.",
        *verdict(result),
        "",
    ]


def render(results: list[dict]) -> str:
    return "\n".join(
        [
            BEGIN,
            "",
            "FLOPs counted with `torch.utils.flop_counter` around every transformer call (int8 rows: the float count). "
            "Points lost: the teacher's accuracy minus the cell's on the same images, with a 95% interval over "
            "captions (paired). Latency: the process's CPU time per image against the float32 teacher's, one "
            "thread, in a separate pass without the FLOP counter (`--timing` images in one batch: generation and "
            "VAE decoding, not text encoding); CPU time rather than wall time because the 2 cores are shared and "
            "the load changed during the run (without a timing pass: wall time, rough).",
            "",
            *[line for result in results for line in render_model(result)],
            "![accuracy against transformer FLOPs](stacking.png)",
            "",
            END,
        ]
    )


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    markers = {"none": "o", "first_block": "s", "taylorseer": "^", "magcache": "D"}
    colours = {"full": "tab:blue", "25%": "tab:orange", "40%": "tab:red"}
    for ax, result in zip(axes[0], results, strict=True):
        default = result["settings"]["num_inference_steps"]
        teacher = teacher_of(result)
        variants = sorted({c["cache"] for c in result["cells"] if c["cache"] not in markers}, reverse=True)
        extra = dict(zip(variants, "dphv<>", strict=False))  # MagCache variants: one marker each
        for c in result["cells"]:
            marker = markers.get(c["cache"], extra.get(c["cache"])) if c["steps"] == default else "*"
            ax.scatter(
                c["flops_saving"],
                100 * c["accuracy"],
                marker=marker,
                color=colours[c["depth"]],
                facecolors="none" if c["weights"] != "fp32" else colours[c["depth"]],
                s=70 if marker == "*" else 45,
            )
        ax.axhspan(100 * teacher["accuracy"] - GOAL_POINTS, 100 * teacher["accuracy"], color="green", alpha=0.08)
        ax.axvline(GOAL_FLOPS, color="green", linestyle=":", linewidth=1)
        for depth, colour in colours.items():
            ax.scatter([], [], color=colour, label=f"depth {depth}")
        for cache, marker in markers.items():
            ax.scatter([], [], marker=marker, color="grey", label=f"cache {cache}")
        for cache, marker in extra.items():
            ax.scatter([], [], marker=marker, color="grey", label=f"cache {cache}")
        if any(c["steps"] != default for c in result["cells"]):
            ax.scatter([], [], marker="*", color="grey", label="fewer steps, no cache")
        ax.scatter([], [], facecolors="none", edgecolors="grey", label="int8 (hollow)")
        ax.set_xlabel("transformer FLOP saving vs teacher (x); goal: right of the dotted line")
        ax.set_ylabel("judge: all four right (%); band: within 2 points")
        ax.set_title(f"{MODELS[result['model']][2].split(' (')[0]}: depth x cache x weights")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
