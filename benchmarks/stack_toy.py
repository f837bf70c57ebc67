"""Depth x cache x weights on the bundled toy world: does depth pruning stack with diffusers' cache hooks and int8?

A SMALL first measurement (the machine is a 2-core CPU shared by several jobs), with these limits, all stated in the
page it writes:

- depth: the teacher (12 blocks) and the preference criterion's 25% and 40% removals of reproduce_paper.py (seed 0
  plans in benchmarks/results/reproduce_paper.json), **not distilled** (the distilled students are not kept as
  assets; distilling them is reproduce_paper.py's 400 steps each);
- cache: none, FirstBlockCache (threshold ``--fbc-threshold``), TaylorSeer (interval 2); MagCache is left out (it
  needs magnitude ratios calibrated per model);
- weights: float32 and int8 weight-only (optimum-quanto, in memory);
- ``--eval-prompts`` held-out captions, one noise seed each; 95% intervals are Wilson intervals over images.

Per cell: the judge's all-four-right accuracy, transformer FLOPs per image counted with
``torch.utils.flop_counter.FlopCounterMode`` around every transformer call (int8 cells: the float cell's count, the
counter does not see quanto's kernels; the arithmetic is the same), and wall time per image as a ratio to the
teacher's float32 uncached cell, measured in the same run. Writes benchmarks/results/stack_toy.json,
docs/stacking.png and the generated section of docs/stacking.md.

    python benchmarks/stack_toy.py                # ~15 min on a shared 2-core CPU
    python benchmarks/stack_toy.py --report-only  # page and plot from the JSON
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from paper.cells import replace_section  # noqa: E402
from toybench import wilson  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "stack_toy.json"
PAGE = ROOT / "docs" / "stacking.md"
PLOT = ROOT / "docs" / "stacking.png"
BEGIN, END = "<!-- stack_toy: begin -->", "<!-- stack_toy: end -->"
DEPTHS = {"full": [], "25%": None, "40%": None}  # dropped blocks; filled from reproduce_paper.json
CACHES = ("none", "first_block", "taylorseer")
WEIGHTS = ("fp32", "int8")
GOAL_FLOPS, GOAL_POINTS = 3.0, 2.0  # the goal: 3x fewer transformer FLOPs within 2 points of the teacher


def plans() -> dict[str, list[int]]:
    data = json.loads((ROOT / "benchmarks" / "results" / "reproduce_paper.json").read_text())
    chosen = data["plans"]["preference"]
    return {"full": [], "25%": chosen["0.25"]["0"], "40%": chosen["0.40"]["0"]}


class FlopMeter:
    """Counts FLOPs of every call of ``module`` (hooks enter / leave a ``FlopCounterMode``)."""

    def __init__(self, module):
        from torch.utils.flop_counter import FlopCounterMode

        self.total = 0
        self._mode = None
        self._cls = FlopCounterMode

        def enter(*_):
            self._mode = self._cls(display=False)
            self._mode.__enter__()

        def leave(*_):
            self._mode.__exit__(None, None, None)
            self.total += self._mode.get_total_flops()

        self.handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def apply_cache(pipe, cache: str, threshold: float) -> None:
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_taylorseer_cache,
    )

    if cache == "first_block":
        apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=threshold))
    elif cache == "taylorseer":
        apply_taylorseer_cache(
            pipe.transformer,
            TaylorSeerCacheConfig(
                cache_interval=2,
                disable_cache_before_step=2,
                taylor_factors_dtype=__import__("torch").float32,
                cache_identifiers=[r"transformer_blocks\.\d+\.attn\d"],  # PixArt's attn1 / attn2 (docs/stacking.md)
            ),
        )


def run(args) -> dict:
    import torch
    from diffusers.models.cache_utils import CacheMixin
    from optimum.quanto import freeze, qint8, quantize

    from diffusers_layerprune.data import encode_prompts
    from diffusers_layerprune.modeling import (
        generate_from_embeddings,
        generation_defaults,
        load_pipeline,
        load_transformer,
        prune_pipeline,
        save_pruned_pipeline,
        with_transformer,
    )
    from diffusers_layerprune.toy import world
    from diffusers_layerprune.toy.judge import judge

    torch.set_num_threads(args.threads)
    base = load_pipeline("toy")
    base.set_progress_bar_config(disable=True)
    defaults = generation_defaults("toy", base)
    gen = {k: defaults[k] for k in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length")}
    captions = world.captions("heldout")[: args.eval_prompts]
    with torch.no_grad():
        embeds = encode_prompts(base, captions, max_sequence_length=gen["max_sequence_length"])
        negative = encode_prompts(base, [""], max_sequence_length=gen["max_sequence_length"])
    seeds = [args.eval_seed + i for i in range(len(captions))]
    students = {}  # depth -> distilled transformer (--distilled)
    if args.distilled:
        from paper.distil import distil

        for depth, dropped in plans().items():
            if not dropped:
                continue
            folder = Path(args.work) / f"drop-{'-'.join(map(str, dropped))}"
            pruned, final = folder / "pruned", folder / "distilled"
            if not (pruned / "model_index.json").is_file():
                save_pruned_pipeline(prune_pipeline(base, pruned_layers=dropped), pruned, overwrite=True)
            # reproduce_paper.py's distillation: seed 0, batch 16, lr 2e-4, cosine (reused when finished)
            seconds = distil(
                "toy", pruned, final, steps=args.distill_steps, batch_size=16, learning_rate=2e-4, seed=0,
                log=folder / "train.log",
            )  # fmt: skip
            print(f"distilled the {depth} student in {seconds:.0f} s", flush=True)
            students[depth] = load_transformer(str(final))
    cells = []
    for depth, dropped in plans().items():
        for weights in WEIGHTS:
            for cache in CACHES:
                # a fresh transformer per cell (hooks and quantization stay on it); the other parts are shared
                if depth in students:
                    pipe = with_transformer(base, copy.deepcopy(students[depth]))
                elif dropped:
                    pipe = prune_pipeline(base, pruned_layers=dropped)
                else:
                    pipe = with_transformer(base, copy.deepcopy(base.transformer))
                pipe.set_progress_bar_config(disable=True)
                if weights == "int8":
                    quantize(pipe.transformer, weights=qint8)
                    freeze(pipe.transformer)
                apply_cache(pipe, cache, args.fbc_threshold)
                meter = FlopMeter(pipe.transformer)
                start = time.perf_counter()
                with torch.no_grad(), CacheMixin.cache_context(pipe.transformer, "cond"):
                    images = generate_from_embeddings(
                        pipe, *embeds, negative, seeds=seeds, batch_size=args.batch_size, **gen
                    )
                seconds = time.perf_counter() - start
                meter.remove()
                report = judge(images, captions)
                correct = sum(report.correct["overall"])
                cell = dict(
                    depth=depth,
                    dropped=dropped,
                    blocks=12 - len(dropped),
                    distilled=depth in students,
                    cache=cache,
                    weights=weights,
                    accuracy=correct / len(captions),
                    ci95=wilson(correct, len(captions)),
                    flops_per_image=meter.total / len(captions),
                    seconds_per_image=seconds / len(captions),
                )
                cells.append(cell)
                print(
                    f"{depth:>4} {weights:>4} {cache:>11}: {100 * cell['accuracy']:.1f}% "
                    f"{cell['flops_per_image'] / 1e9:.3f} GFLOP/img {cell['seconds_per_image'] * 1e3:.0f} ms/img",
                    flush=True,
                )
    by = {(c["depth"], c["cache"], c["weights"]): c for c in cells}
    teacher = by["full", "none", "fp32"]
    for c in cells:
        if c["weights"] == "int8":  # the counter does not see quanto's kernels: the float cell's count
            c["flops_counted"] = c["flops_per_image"]
            c["flops_per_image"] = by[c["depth"], c["cache"], "fp32"]["flops_per_image"]
        c["flops_saving"] = teacher["flops_per_image"] / c["flops_per_image"]
        c["latency_ratio"] = c["seconds_per_image"] / teacher["seconds_per_image"]
        c["points_lost"] = 100 * (teacher["accuracy"] - c["accuracy"])
        c["cache_work_fraction"] = (
            by[c["depth"], c["cache"], "fp32"]["flops_per_image"] / (by[c["depth"], "none", "fp32"]["flops_per_image"])
        )
    return dict(
        settings=dict(vars(args), **gen),
        captions=len(captions),
        machine=f"{os.cpu_count()}-core CPU (shared)",
        cells=cells,
    )


def verdict(result: dict) -> list[str]:
    cells = result["cells"]
    teacher = next(c for c in cells if c["depth"] == "full" and c["cache"] == "none" and c["weights"] == "fp32")
    within = [c for c in cells if c["points_lost"] <= GOAL_POINTS]
    best = max(within, key=lambda c: c["flops_saving"])
    lines = [
        f"- Teacher: {100 * teacher['accuracy']:.1f}% all four right, "
        f"{teacher['flops_per_image'] / 1e9:.3f} GFLOP per image (transformer).",
        f"- Largest FLOP saving within {GOAL_POINTS:.0f} points of the teacher: {best['flops_saving']:.2f}x "
        f"({best['depth']}, {best['cache']}, {best['weights']}; {100 * best['accuracy']:.1f}%). "
        + (
            f"The goal ({GOAL_FLOPS:.0f}x within {GOAL_POINTS:.0f} points) is "
            + ("met." if best["flops_saving"] >= GOAL_FLOPS else f"**not met** in this run ({distillation(result)}).")
        ),
    ]
    gains = []
    for cache in CACHES[1:]:
        full = next(c for c in cells if (c["depth"], c["cache"], c["weights"]) == ("full", cache, "fp32"))
        for depth in ("25%", "40%"):
            pruned = next(c for c in cells if (c["depth"], c["cache"], c["weights"]) == (depth, cache, "fp32"))
            gains.append(
                f"{cache} keeps {100 * full['cache_work_fraction']:.0f}% of the full model's work and "
                f"{100 * pruned['cache_work_fraction']:.0f}% of the {depth}-pruned model's"
            )
    lines.append(
        "- Do depth and caching add up? Savings multiply when a cache keeps the same share of work after pruning: "
        + "; ".join(gains)
        + "."
    )
    return lines


def distillation(result: dict) -> str:
    """How the pruned models of ``result`` were made, for the page."""
    steps = result["settings"].get("distill_steps")
    if result["settings"].get("distilled"):
        return f"pruned models distilled {steps} steps as in reproduce_paper.py"
    return "pruned models **not distilled**"


def render(result: dict) -> str:
    rows = [
        "| depth | blocks | cache | weights | all four right (95% CI) | points lost | GFLOP / image | FLOP saving | "
        "cache keeps work | latency vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        low, high = c["ci95"]
        rows.append(
            f"| {c['depth']} | {c['blocks']} | {c['cache']} | {c['weights']} | {100 * c['accuracy']:.1f}% "
            f"({100 * low:.0f}-{100 * high:.0f}) | {c['points_lost']:+.1f} | {c['flops_per_image'] / 1e9:.3f} | "
            f"{c['flops_saving']:.2f}x | {100 * c['cache_work_fraction']:.0f}% | {c['latency_ratio']:.2f} |"
        )
    s = result["settings"]
    return "\n".join(
        [
            BEGIN,
            "",
            f"Toy world, {result['captions']} held-out captions, one seed each, {s['num_inference_steps']} steps, "
            f"guidance {s['guidance_scale']}, {result['machine']}; {distillation(result)}; "
            f"FirstBlockCache threshold {s['fbc_threshold']}, TaylorSeer interval 2 from step 2. "
            "FLOPs counted with `torch.utils.flop_counter` around every transformer call (int8 rows: the float "
            "count). Latency is wall time per image against the float32 teacher in the same run (a shared CPU: "
            "treat it as rough).",
            "",
            *rows,
            "",
            *verdict(result),
            "",
            "![accuracy against transformer FLOPs](stacking.png)",
            "",
            END,
        ]
    )


def plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    markers = {"none": "o", "first_block": "s", "taylorseer": "^"}
    colours = {"full": "tab:blue", "25%": "tab:orange", "40%": "tab:red"}
    for c in result["cells"]:
        ax.scatter(
            c["flops_saving"],
            100 * c["accuracy"],
            marker=markers[c["cache"]],
            color=colours[c["depth"]],
            facecolors="none" if c["weights"] == "int8" else colours[c["depth"]],
            s=50,
        )
    for depth, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"depth {depth}")
    for cache, marker in markers.items():
        ax.scatter([], [], marker=marker, color="grey", label=f"cache {cache}")
    ax.scatter([], [], facecolors="none", edgecolors="grey", label="int8 (hollow)")
    ax.set_xlabel("transformer FLOP saving vs teacher (x)")
    ax.set_ylabel("judge: all four right (%)")
    ax.set_title(
        f"Toy world: depth x cache x weights ({'distilled' if result['settings'].get('distilled') else 'undistilled'})"
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--eval-seed", type=int, default=100000)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--distilled", action="store_true", help="distil the 25%%/40%% students first (reproduce_paper.py's recipe)"
    )
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--work", default="runs/stack_toy", help="where the distilled students are kept (reused)")
    args = parser.parse_args(argv)
    if args.report_only:
        result = json.loads(RESULT.read_text())
    else:
        result = run(args)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
    plot(result)
    replace_section(PAGE, BEGIN, END, render(result))
    print("\n".join(verdict(result)))


if __name__ == "__main__":
    main()
