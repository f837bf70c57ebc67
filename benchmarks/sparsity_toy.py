"""Post-training weight sparsity on the bundled toy world: quality curves, the SD2 study's claims, and sparsity
combined with depth pruning. Writes benchmarks/results/sparsity_toy.json, docs/sparsity.md and docs/sparsity.png.

1. **Curves.** For each component (text_encoder, transformer, both) x method (magnitude, wanda): unstructured
   sparsity 10..90% in steps of 10 (scope ``layer``: magnitude per layer, Wanda per output row), and the N:4 family
   3:4, 2:4, 1:4 (25, 50, 75%). Wanda calibrates on ``--calibration-prompts`` training captions drawn with seed
   ``s`` (noise seeds ``1000 s + i``, a full 20-step generation, one pass of the dense model), for each of
   ``--seeds``; magnitude has no randomness and runs once. Every cell is judged on the 216 held-out captions with
   the same noise (``--eval-seed + i``), so cells compare image for image.
2. **Claims** of the post-training pruning study of Stable Diffusion 2, each stated as holds / partly / does not
   hold, with the rules written in the generated page.
3. **Depth + sparsity.** The transformer's non-zero parameter count of 25% depth pruning (3 of 12 blocks removed)
   is reached with d = 0, 1, 2 blocks removed plus the magnitude sparsity that removes the rest, and with d = 3
   alone. Blocks are chosen by the preference criterion (scored per seed on 64 training captions, as
   reproduce_paper.py does). Each pair is judged before and after the same distillation budget
   (``training/train_distill.py``, 400 steps, the settings of reproduce_paper.py); the sparse students keep their
   zeros (train_distill re-applies the masks after every step when the student folder has ``sparsity.json``).
   The other order (distil the depth-pruned model, then sparsify) is measured for d = 1, 2 as a check of that
   choice.

Cells are appended to ``OUTPUT/cells.jsonl`` as they finish; a re-run skips finished cells. ``--report-only``
rebuilds the doc and the plot from benchmarks/results/sparsity_toy.json.

    python benchmarks/sparsity_toy.py                # everything (~40 min on a 2-core CPU)
    python benchmarks/sparsity_toy.py --report-only  # docs/sparsity.md + docs/sparsity.png from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

# Before torch is imported (diffusers imports it): spinning OpenMP waits stall badly on shared cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's package, then benchmarks/paper
from paper.cells import Cells  # noqa: E402  (the append-only cell store of every toy-world grid)
from paper.distil import distil  # noqa: E402  (the same distillation recipe as reproduce_paper.py)
from toybench import METRICS, judged  # noqa: E402  (the toy judge's record, shared by the toy benchmarks)

COMPONENT_SETS = ("text_encoder", "transformer", "both")
METHODS = ("magnitude", "wanda")
SPARSITIES = tuple(round(0.1 * i, 1) for i in range(1, 10))
N_M = ("3:4", "2:4", "1:4")
# Rules fixed before the run (see the page): quality "kept" = at least KEEP of the dense model's all-four-right
# accuracy at this sparsity and every lower one; "collapsed" = at most COLLAPSE of it; a collapse is sudden when
# it comes within SUDDEN of sparsity after the last kept level. A comparison is a tie within TIE_IMAGES images.
KEEP, COLLAPSE, SUDDEN, TIE_IMAGES = 0.9, 0.2, 0.2, 1


# ---------------------------------------------------------------------------------------------------------------
# Aggregation and claims: pure functions of the cells (list of dicts), so --report-only needs no model.


def mean_std(values) -> dict:
    values = [float(v) for v in values]
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def curve_table(cells: list[dict]) -> dict:
    """``[component][method][pattern][sparsity] -> {metric: mean_std, "toy_score": ..., "achieved": ...}``;
    sparsity 0 is the dense model, shared by every curve."""
    groups: dict = {}
    for c in cells:
        if c.get("stage") != "curve":
            continue
        key = (c["component"], c["method"], c["pattern"], c["sparsity"])
        groups.setdefault(key, []).append(c)
    dense = [c for c in cells if c.get("stage") == "dense"]
    table: dict = {}
    for (component, method, pattern, sparsity), group in groups.items():
        row = {m: mean_std([c["accuracy"][m] for c in group]) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in group])
        row["achieved"] = statistics.mean(c["achieved"] for c in group)
        table.setdefault(component, {}).setdefault(method, {}).setdefault(pattern, {})[sparsity] = row
    if dense:
        row = {m: mean_std([c["accuracy"][m] for c in dense]) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in dense])
        row["achieved"] = 0.0
        for component in table:
            for method in table[component]:
                table[component][method].setdefault("unstructured", {})[0.0] = row
    return table


def _verdict(won: int, lost: int) -> str:
    if won + lost == 0:
        return "not measured"
    if lost == 0:
        return "holds"
    return "partly" if won > lost else "does not hold"


def kept_and_collapse(curve: dict) -> dict:
    """Where an unstructured curve stops keeping quality and where it collapses (rules at the top of the file)."""
    levels = sorted(curve)
    dense = curve[0.0]["overall"]["mean"]
    last_kept, first_collapsed = 0.0, None
    for s in levels[1:]:
        if curve[s]["overall"]["mean"] >= KEEP * dense and last_kept == levels[levels.index(s) - 1]:
            last_kept = s
    for s in levels[1:]:
        if curve[s]["overall"]["mean"] <= COLLAPSE * dense:
            first_collapsed = s
            break
    width = None if first_collapsed is None else round(first_collapsed - last_kept, 6)
    return {
        "last_kept": last_kept,
        "first_collapsed": first_collapsed,
        "width": width,
        "sudden": width is not None and width <= SUDDEN + 1e-9,
        "accuracy": {s: curve[s]["overall"]["mean"] for s in levels},
    }


def check_claims(cells: list[dict], num_images: int) -> list[dict]:
    table = curve_table(cells)
    tie = TIE_IMAGES / num_images + 1e-12
    claims = []

    # 1. magnitude >= wanda, at every (component, pattern, sparsity) both measured
    comparisons = []
    for component in table:
        mag, wan = table[component].get("magnitude", {}), table[component].get("wanda", {})
        for pattern in mag:
            for s, row in mag[pattern].items():
                if s == 0.0 or s not in wan.get(pattern, {}):
                    continue
                a, b = row["overall"]["mean"], wan[pattern][s]["overall"]["mean"]
                comparisons.append(
                    {
                        "component": component,
                        "pattern": pattern,
                        "sparsity": s,
                        "magnitude": a,
                        "wanda": b,
                        "result": "tie" if abs(a - b) <= tie else ("magnitude" if a > b else "wanda"),
                    }
                )
    won = sum(c["result"] == "magnitude" for c in comparisons)
    lost = sum(c["result"] == "wanda" for c in comparisons)
    by_component = {
        comp: {
            r: sum(c["result"] == r for c in comparisons if c["component"] == comp)
            for r in ("magnitude", "tie", "wanda")
        }
        for comp in table
    }
    claims.append(
        {
            "id": "magnitude_beats_wanda",
            "claim": "Plain magnitude pruning is at least as good as Wanda (activation-aware) on a text-to-image model.",
            "verdict": _verdict(won, lost),
            "won": won,
            "lost": lost,
            "tied": len(comparisons) - won - lost,
            "by_component": by_component,
            "mean_difference": statistics.mean(c["magnitude"] - c["wanda"] for c in comparisons)
            if comparisons
            else None,
            "comparisons": comparisons,
        }
    )

    # 2. the text encoder tolerates more sparsity than the denoiser
    tolerance = {}
    for component in ("text_encoder", "transformer"):
        for method in table.get(component, {}):
            curve = table[component][method].get("unstructured", {})
            if 0.0 in curve and len(curve) > 1:
                tolerance.setdefault(method, {})[component] = kept_and_collapse(curve)
    rows = []
    for method, by_component in tolerance.items():
        if len(by_component) == 2:
            te, tf = by_component["text_encoder"]["last_kept"], by_component["transformer"]["last_kept"]
            rows.append(
                {"method": method, "text_encoder": te, "transformer": tf, "te_more": te > tf, "tf_more": tf > te}
            )
    claims.append(
        {
            "id": "text_encoder_tolerates_more",
            "claim": "The text encoder tolerates more sparsity than the denoiser.",
            "verdict": _verdict(sum(r["te_more"] for r in rows), sum(not r["te_more"] for r in rows))
            if rows
            else "not measured",
            "comparisons": rows,
        }
    )

    # 3. a sudden collapse threshold
    curves = []
    for component in table:
        for method in table[component]:
            curve = table[component][method].get("unstructured", {})
            if 0.0 in curve and len(curve) > 1:
                curves.append({"component": component, "method": method, **kept_and_collapse(curve)})
    sudden = sum(c["sudden"] for c in curves)
    claims.append(
        {
            "id": "sudden_collapse",
            "claim": "Past a threshold, quality collapses suddenly rather than degrading gradually.",
            "verdict": _verdict(sudden, len(curves) - sudden),
            "curves": curves,
        }
    )
    return claims


def combination_table(cells: list[dict]) -> dict:
    """``[label][stage] -> metrics`` for the depth + sparsity pairs; stage ``before``, ``after``, ``distil_then_sparsify``."""
    groups: dict = {}
    for c in cells:
        if c.get("stage") not in ("combo_before", "combo_after", "combo_distil_then_sparsify"):
            continue
        groups.setdefault((c["depth"], c["stage"].removeprefix("combo_")), []).append(c)
    table: dict = {}
    for (depth, stage), group in groups.items():
        row = {m: mean_std([c["accuracy"][m] for c in group]) for m in METRICS}
        row["toy_score"] = mean_std([c["toy_score"] for c in group])
        row["sparsity"] = statistics.mean(c["sparsity"] for c in group)
        row["nonzero"] = statistics.mean(c["nonzero"] for c in group)
        row["achieved"] = statistics.mean(c["achieved"] for c in group)
        row["zeros_kept"] = all(c.get("zeros_kept", True) for c in group)
        row["seeds"] = sorted(c["seed"] for c in group)
        table.setdefault(depth, {})[stage] = row
    return dict(sorted(table.items()))


# ---------------------------------------------------------------------------------------------------------------
# The page and the plot.


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = curve_table(result["cells"])
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5), sharex=True, sharey="row")
    colours = {"magnitude": "tab:blue", "wanda": "tab:orange"}
    for col, component in enumerate(COMPONENT_SETS):
        for row, metric in enumerate(("overall", "toy_score")):
            ax = axes[row][col]
            for method in METHODS:
                curves = table.get(component, {}).get(method, {})
                un = curves.get("unstructured", {})
                if un:
                    xs = sorted(un)
                    ax.errorbar(
                        [100 * x for x in xs],
                        [un[x][metric]["mean"] for x in xs],
                        yerr=[un[x][metric]["std"] for x in xs],
                        color=colours[method],
                        marker="o",
                        ms=3,
                        capsize=2,
                        label=f"{method}, unstructured",
                    )
                nm = [(p, curves[p]) for p in N_M if p in curves]
                if nm:
                    xs = [100 * next(iter(c)) for _, c in nm]
                    ys = [next(iter(c.values()))[metric]["mean"] for _, c in nm]
                    ax.plot(
                        xs, ys, ls=":", marker="s", ms=6, color=colours[method], label=f"{method}, N:4 (3:4, 2:4, 1:4)"
                    )
            ax.set_title(
                f"{component.replace('_', ' ')}: {'all four right' if metric == 'overall' else 'toy score'}",
                fontsize=10,
            )
            ax.grid(alpha=0.3)
            if row == 1:
                ax.set_xlabel("sparsity of the pruned Linear weights (%)")
            if col == 0:
                ax.set_ylabel("held-out accuracy" if metric == "overall" else "toy preference score")
    axes[0][2].legend(fontsize=8, loc="upper right")
    fig.suptitle(
        "Toy world: quality against weight sparsity (mean ± std over calibration seeds for wanda)", fontsize=11
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


VERDICT_WORDS = {"holds": "**Holds**", "partly": "**Partly holds**", "does not hold": "**Does not hold**"}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def render_page(result: dict) -> str:
    s = result["settings"]
    cells = result["cells"]
    table = curve_table(cells)
    claims = result["claims"]
    dense = next(c for c in cells if c.get("stage") == "dense")
    params = result["params"]
    sizes = result.get("folder_sizes", {})
    out = [
        "# Weight sparsity: magnitude, Wanda and 2:4 on the toy world",
        "",
        "<!-- Generated by benchmarks/sparsity_toy.py; edit the script, not this file. -->",
        "",
        "`layerprune sparsify` zeroes a fraction of the Linear weights of a pipeline's text encoder and/or transformer "
        "(post-training, no retraining) and saves a pipeline that stock diffusers loads. This page measures what that "
        "costs in quality on the bundled toy world (docs/toy_world.md), checks three findings of a post-training "
        "pruning study of Stable Diffusion 2 on it, and compares sparsity with depth pruning at the same parameter "
        "count. Regenerate it (finished cells are reused; the runtime is at the end of the page):",
        "",
        "```bash",
        "python benchmarks/sparsity_toy.py                # run what is missing, then write this page",
        "python benchmarks/sparsity_toy.py --report-only  # this page and the plot from benchmarks/results/sparsity_toy.json",
        "```",
        "",
        "## Use it",
        "",
        "```bash",
        "layerprune sparsify --model toy --component transformer --method magnitude --sparsity 0.5 --output runs/sparse",
        "layerprune sparsify --model toy --component both --text-encoder-sparsity 0.5 --transformer-sparsity 0.3 \\",
        "    --method wanda --prompts toy:train --output runs/wanda",
        "layerprune sparsify --model runs/pruned --component transformer --pattern 2:4 --output runs/pruned-2-4",
        "```",
        "",
        "```python",
        "from diffusers_layerprune.sparsity import sparsify_pipeline",
        "",
        'record = sparsify_pipeline(pipe, "both", sparsity=0.5, method="magnitude")  # in place; returns what was done',
        "```",
        "",
        "- Pruned: every `nn.Linear` weight of the chosen components; never embeddings, norms, convolutions or biases; "
        "the transformer's final projection `proj_out` only with `--include-final-projection`.",
        "- `magnitude` scores |W|; `--scope layer` (default) zeroes exactly round(S x n) weights of each layer, "
        "`--scope global` one threshold over a component. `wanda` (Sun et al., 2023) scores |W| x ||X||, X the layer's "
        "inputs over the calibration prompts (`--prompts`, required), and compares weights within each output row. "
        "Norms are captured with forward hooks in one pass of the dense model: the text encoder encodes the prompts "
        "(real tokens only, padding masked out); the transformer runs a full generation of each prompt "
        "(`--calibration-steps`, default the model's 20 steps on the toy, with classifier-free guidance).",
        "- `--pattern N:M` keeps at most N non-zero weights in every M consecutive input weights of a row; `2:4` "
        "(50%) is the pattern NVIDIA sparse tensor cores run (benchmarks/bench_sparsity.py).",
        "- `sparsity.json` beside the weights records method, pattern, scope, per-component target and achieved "
        "sparsity, per-layer zero counts and the calibration prompts (source, count, fingerprint). `layerprune prune` "
        "of a sparsified folder carries it over (measured again on the kept blocks), and `train_distill` keeps the "
        "zeros of a sparsified student (the masks are re-applied after every optimiser step) and records the step.",
        "",
        "## Size on disk, and how to get real savings",
        "",
    ]
    if sizes:
        out += [
            "Zeros are stored densely in safetensors, so a sparsified folder is as large as the dense one. Measured on "
            f"the toy pipeline (float32): dense folder {sizes['dense_bytes'] / 1e6:.2f} MB, 50%-sparse (both "
            f"components, magnitude) {sizes['sparse_bytes'] / 1e6:.2f} MB; as `.tar.gz` {sizes['dense_gz_bytes'] / 1e6:.2f} "
            f"MB vs {sizes['sparse_gz_bytes'] / 1e6:.2f} MB ({100 * sizes['sparse_gz_bytes'] / sizes['dense_gz_bytes']:.0f}% "
            "of the dense archive).",
            "",
        ]
    out += [
        "To turn zeros into bytes:",
        "",
        "- **Compressed archives** (`tar` + `zstd`/`gzip`, or a compressing file system): zeros compress to almost "
        "nothing, so the download shrinks roughly with the sparsity (see the measurement above; bfloat16 weights "
        "compress less than float32 apart from the zeros). The files on disk after unpacking keep the dense size.",
        "- **2:4 packed on GPU**: `torch.sparse.to_sparse_semi_structured` stores the two kept values of every "
        "group of four plus a few bits of position metadata, about 56% of the dense fp16/bf16 size, and runs faster "
        "on Ampere or newer GPUs (benchmarks/bench_sparsity.py converts a 2:4 transformer). It works in memory after "
        "loading; the saved folder stays dense, which is what lets stock diffusers load it.",
        "- For PixArt-Sigma, 87% of the parameters are in the T5-XXL text encoder (4.7B of ~5.4B), so that is where "
        "sparsity saves most bytes: at 50%, 2.35B of its weights are zeros, ~4.7 GB of its ~9.5 GB in bfloat16 that a "
        "compressed archive need not carry; packed 2:4 in GPU memory saves about 44% of it (~4.2 GB).",
        "",
        "## What was run",
        "",
        f"- Model: the toy pipeline (12-block transformer, {params['transformer']:,d} parameters, of which "
        f"{params['transformer_sparsifiable']:,d} in pruned Linear weights; text encoder {params['text_encoder']:,d} "
        f"parameters, {params['text_encoder_sparsifiable']:,d} in Linear weights). Unlike PixArt-Sigma, the toy's text "
        "encoder is a small, randomly initialised, frozen T5 (the transformer learned to read its features), and only "
        f"{100 * params['text_encoder'] / (params['text_encoder'] + params['transformer']):.0f}% of the two components' "
        "parameters.",
        f"- Grid: component x method x (unstructured {', '.join(_pct(x) for x in SPARSITIES)}; N:4 patterns "
        f"{', '.join(N_M)}). Magnitude once (deterministic); Wanda with seeds {', '.join(map(str, s['seeds']))}: "
        f"{s['calibration_prompts']} training captions drawn per seed, a {s['num_inference_steps']}-step generation "
        "each.",
        f"- Judged on all {result['num_images']} held-out captions, the same noise for every cell (seed "
        f"{s['eval_seed']} + i); accuracy = all four attributes right; toy score = mean toy preference score.",
        f"- Dense model: {100 * dense['accuracy']['overall']:.1f}% all four right, toy score {dense['toy_score']:.3f}.",
        "",
        "## Claims of the Stable Diffusion 2 study, checked on this world",
        "",
        f"Rules (fixed before the run): two accuracies tie within {TIE_IMAGES} image of {result['num_images']}; a "
        f"curve *keeps* quality up to the highest sparsity at which it, and every lower level, has at least "
        f"{KEEP:.0%} of the dense accuracy; it has *collapsed* at the first level with at most {COLLAPSE:.0%} of it; "
        f"a collapse is *sudden* when it comes within {100 * SUDDEN:.0f} points of sparsity after the last kept level. "
        "Verdicts: magnitude >= Wanda **holds** when Wanda is ahead in no cell, **partly** when magnitude is ahead in "
        "more cells than Wanda; the text encoder claim holds when it keeps quality to a higher sparsity than the "
        "transformer for both methods, partly for one; the collapse claim holds when every unstructured curve "
        "collapses suddenly, partly when more do than do not (a curve that never collapses up to 90%, or collapses "
        "gradually, counts against).",
        "",
    ]
    for claim in claims:
        out.append(f"- {VERDICT_WORDS.get(claim['verdict'], claim['verdict'])}: {claim['claim']}")
        if claim["id"] == "magnitude_beats_wanda":
            out.append(
                f"  Over {claim['won'] + claim['lost'] + claim['tied']} (component, pattern, sparsity) cells, magnitude "
                f"is ahead in {claim['won']}, Wanda in {claim['lost']}, tied in {claim['tied']}; mean difference "
                f"(magnitude - Wanda) {100 * claim['mean_difference']:+.1f} points of accuracy."
            )
            for comp, counts in claim["by_component"].items():
                out.append(
                    f"  {comp}: magnitude ahead {counts['magnitude']}, tied {counts['tie']}, Wanda ahead "
                    f"{counts['wanda']}."
                )
        elif claim["id"] == "text_encoder_tolerates_more":
            for row in claim["comparisons"]:
                out.append(
                    f"  {row['method']}: quality kept up to {_pct(row['text_encoder'])} sparsity of the text encoder vs "
                    f"{_pct(row['transformer'])} of the transformer."
                )
        elif claim["id"] == "sudden_collapse":
            for c in claim["curves"]:
                where = (
                    f"collapsed at {_pct(c['first_collapsed'])} ({100 * c['accuracy'][c['first_collapsed']]:.1f}% all "
                    "four right)"
                    if c["first_collapsed"] is not None
                    else "no collapse up to 90%"
                )
                kind = "sudden" if c["sudden"] else ("gradual" if c["first_collapsed"] is not None else "")
                out.append(
                    f"  {c['component']}, {c['method']}: kept up to {_pct(c['last_kept'])} "
                    f"({100 * c['accuracy'][c['last_kept']]:.1f}%), {where}{', ' + kind if kind else ''}."
                )
    out += [
        "",
        "![judge accuracy and toy score against sparsity](sparsity.png)",
        "",
        "Lines: unstructured (error bars: std over Wanda's calibration seeds); dotted squares: the N:4 patterns at "
        "25, 50 and 75%. The 2:4 point is the 50% square.",
        "",
        "## Quality against sparsity",
        "",
        "All four attributes right (%), mean over seeds (± std for Wanda). Sparsity is the target; the achieved "
        "fraction of zeros over the pruned weights equals it to within 0.5% (N:4 exactly).",
        "",
    ]
    columns = [("unstructured", x) for x in SPARSITIES] + [(p, None) for p in N_M]
    header = "| component | method | " + " | ".join(_pct(x) if x is not None else p for p, x in columns) + " |"
    for metric, label, fmt in (
        (
            "overall",
            "All four right (%)",
            lambda m: f"{100 * m['mean']:.1f}" + (f" ± {100 * m['std']:.1f}" if m["n"] > 1 else ""),
        ),
        ("toy_score", "Toy preference score", lambda m: f"{m['mean']:.3f}"),
    ):
        out += [f"{label}:", "", header, "|---|---|" + "---|" * len(columns)]
        for component in COMPONENT_SETS:
            for method in METHODS:
                curves = table.get(component, {}).get(method, {})
                row = []
                for pattern, x in columns:
                    cell = curves.get(pattern, {})
                    value = cell.get(x) if x is not None else next(iter(cell.values()), None)
                    row.append("-" if value is None else fmt(value[metric]))
                out.append(f"| {component} | {method} | " + " | ".join(row) + " |")
        out.append("")

    lines = []
    for component in COMPONENT_SETS:
        for method in METHODS:
            curves = table.get(component, {}).get(method, {})
            nm, un = curves.get("2:4", {}).get(0.5), curves.get("unstructured", {}).get(0.5)
            if nm and un:
                lines.append(
                    f"{component} {method} {100 * nm['overall']['mean']:.1f}% vs {100 * un['overall']['mean']:.1f}%"
                )
    if lines:
        out += [
            "The 2:4 pattern against unstructured pruning at the same 50% (all four right): " + "; ".join(lines) + ". "
            "Forcing two zeros into every group of four costs quality here; its payoff is speed on sparse tensor "
            "cores, which unstructured sparsity does not get.",
            "",
        ]

    combo = combination_table(cells)
    if combo:
        target = result["combination"]["target_nonzero"]
        out += [
            "## Depth and sparsity at the same parameter count",
            "",
            f"Every row has the non-zero transformer parameters of 25% depth pruning ({target:,d}; the dense "
            f"transformer has {params['transformer']:,d}): d blocks removed by the preference criterion (per seed), "
            "the rest by magnitude sparsity of the remaining Linear weights. The text encoder is untouched. "
            f"Distillation: {s['distill_steps']} steps of train_distill (batch {s['distill_batch_size']}, lr "
            f"{s['learning_rate']}, cosine, output + feature KD on the toy training captions), seeds "
            f"{', '.join(map(str, s['combo_seeds']))}; sparse students keep their zeros (re-applied after every step). "
            "All four right (%), mean ± std over seeds; toy score in brackets.",
            "",
            "| blocks removed | sparsity of the rest | non-zero params | before distillation | after distillation | "
            f"distil first, then sparsify (seed{'s' if len(s.get('order_seeds', [])) > 1 else ''} "
            f"{', '.join(map(str, s.get('order_seeds', [])))}) |",
            "|---|---|---|---|---|---|",
        ]

        def fmt(row):
            if row is None:
                return "-"
            return f"{100 * row['overall']['mean']:.1f} ± {100 * row['overall']['std']:.1f} ({row['toy_score']['mean']:.3f})"

        for depth, stages in combo.items():
            ref = stages.get("before") or stages.get("after")
            kept = "" if stages.get("after", {}).get("zeros_kept", True) else " (zeros lost!)"
            out.append(
                f"| {depth} of 12 | {100 * ref['sparsity']:.1f}% | {ref['nonzero']:,.0f} | {fmt(stages.get('before'))} | "
                f"{fmt(stages.get('after'))}{kept} | {fmt(stages.get('distil_then_sparsify'))} |"
            )
        out += ["", *result["combination"]["summary"], ""]

    out += [
        "## Limits",
        "",
        "- A toy: a 12-block, width-64 transformer and a 2-layer random T5. Tolerances, and which component tolerates "
        "more, depend on the model; the text-encoder result in particular says little about a trained T5-XXL.",
        "- Wanda uses norms of the dense model in one pass (the paper recomputes each block's inputs on the pruned "
        "earlier blocks). SparseGPT (weight reconstruction) is not implemented.",
        "- CPU only: 2:4 here is a mask and changes quality, not speed. benchmarks/bench_sparsity.py times the packed "
        "2:4 kernels on a GPU.",
        "",
        f"Runtime: {result['total_minutes']:.1f} min of cell compute on a {result['machine']}"
        + (f" ({result['runtime_note']})" if result.get("runtime_note") else "")
        + ".",
        "",
    ]
    return "\n".join(out)


def combination_summary(result: dict) -> list[str]:
    combo = combination_table(result["cells"])
    lines = []
    for stage, label in (("before", "before distillation"), ("after", "after distillation")):
        rows = {d: stages[stage] for d, stages in combo.items() if stage in stages}
        if 3 not in rows or len(rows) < 2:
            continue
        best = max(rows, key=lambda d: rows[d]["overall"]["mean"])
        depth_only = rows[3]["overall"]["mean"]
        if best == 3:
            lines.append(
                f"- {label.capitalize()}: 25% depth pruning alone is the best of these at this parameter count "
                f"({100 * depth_only:.1f}%)."
            )
        else:
            lines.append(
                f"- {label.capitalize()}: the best pair removes {best} block{'s' if best != 1 else ''} and makes the rest "
                f"{100 * rows[best]['sparsity']:.1f}% sparse: {100 * rows[best]['overall']['mean']:.1f}% vs "
                f"{100 * depth_only:.1f}% for 25% depth pruning alone ({100 * (rows[best]['overall']['mean'] - depth_only):+.1f} points)."
            )
    # the other order was run for some seeds only: compare seed by seed
    by_key = {(c["stage"], c["depth"], c["seed"]): c["accuracy"]["overall"] for c in result["cells"] if "depth" in c}
    pairs = [
        (d, seed, by_key[("combo_after", d, seed)], value)
        for (stage, d, seed), value in sorted(by_key.items())
        if stage == "combo_distil_then_sparsify" and ("combo_after", d, seed) in by_key
    ]
    if pairs:
        better = sum(after >= first for _, _, after, first in pairs)
        lines.append(
            f"- Order: sparsify, then distil keeping the zeros, is at least as good as distil, then sparsify in {better} "
            f"of {len(pairs)} (depth, seed) pairs ("
            + "; ".join(f"d={d}, seed {seed}: {100 * a:.1f}% vs {100 * b:.1f}%" for d, seed, a, b in pairs)
            + ")."
        )
    kept = all(st.get("after", {}).get("zeros_kept", True) for st in combo.values())
    lines.append(
        "- The sparse students kept every zero through distillation (sparsity.json and the weights agree)."
        if kept
        else "- Some sparse students lost zeros in distillation: see the cells."
    )
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Running the cells.


class Benchmark:
    def __init__(self, args) -> None:
        self.args = args
        self.output = Path(args.output)
        self.cells = Cells(self.output / "cells.jsonl")
        self.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        self.combo_seeds = [int(x) for x in args.combo_seeds.split(",") if x.strip()]
        self.order_seeds = [int(x) for x in args.order_seeds.split(",") if x.strip()]
        self._norms: dict = {}

    def setup(self) -> None:
        import torch

        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        torch.set_num_threads(self.args.threads)
        self.pipe = load_pipeline("toy")
        self.pipe.set_progress_bar_config(disable=True)
        d = generation_defaults("toy", self.pipe)
        self.gen = {k: d[k] for k in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length")}
        self.scorer = load_scorer("toy")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        self.train_captions = world.captions("train")
        self.dense = {
            name: {k: v.detach().clone() for k, v in getattr(self.pipe, name).state_dict().items()}
            for name in ("text_encoder", "transformer")
        }

    def restore(self) -> None:
        for name, state in self.dense.items():
            getattr(self.pipe, name).load_state_dict(state)

    def evaluate(self, pipe) -> dict:
        import torch

        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.modeling import generate_from_embeddings

        start = time.perf_counter()
        g = self.gen
        with torch.no_grad():
            embeds = encode_prompts(pipe, self.captions, max_sequence_length=g["max_sequence_length"])
            negative = encode_prompts(pipe, [""], max_sequence_length=g["max_sequence_length"])
            images = generate_from_embeddings(
                pipe,
                *embeds,
                negative,
                seeds=[self.args.eval_seed + i for i in range(len(self.captions))],
                batch_size=self.args.batch_size,
                **g,
            )
        return {**judged(images, self.captions, self.scorer), "seconds": time.perf_counter() - start}

    def cell(self, key: str, fields: dict, compute) -> dict:
        record = self.cells.get(key)
        if record is None:
            record = self.cells.put(key, {**fields, **compute(), "load_average": os.getloadavg()[0]})
            print(
                f"  {key}: all four {100 * record['accuracy']['overall']:.1f}%, toy score {record['toy_score']:.3f} "
                f"({record['seconds']:.0f} s)",
                flush=True,
            )
        return record

    def calibration_prompts(self, seed: int):
        from diffusers_layerprune.data import PromptSet

        chosen = random.Random(seed).sample(self.train_captions, self.args.calibration_prompts)
        return PromptSet(chosen, "toy:train", meta={"sample_seed": seed, "limit": self.args.calibration_prompts})

    def norms(self, seed: int):
        """Input norms of the dense model for both components, one pass per seed (shared by every Wanda cell)."""
        if seed not in self._norms:
            from diffusers_layerprune.sparsity import collect_input_norms

            self.restore()
            self._norms[seed] = collect_input_norms(
                self.pipe,
                ["text_encoder", "transformer"],
                self.calibration_prompts(seed),
                seed=1000 * seed,
                batch_size=self.args.batch_size,
                **self.gen,
            )
        return self._norms[seed]

    # -- 1. curves ---------------------------------------------------------------------------------------------
    def curves(self) -> None:
        from diffusers_layerprune.sparsity import sparsify_pipeline

        def dense():
            self.restore()
            return {"achieved": 0.0, **self.evaluate(self.pipe)}

        self.cell("dense", {"stage": "dense", "seed": None}, dense)
        points = [("unstructured", s) for s in SPARSITIES] + [(p, None) for p in N_M]
        for method in METHODS:
            for seed in self.seeds if method == "wanda" else [None]:
                for component in COMPONENT_SETS:
                    for pattern, sparsity in points:
                        level = sparsity if sparsity is not None else 1 - int(pattern[0]) / int(pattern[2])
                        key = f"curve|{component}|{method}|{pattern}|{level:g}|seed={seed}"

                        def compute(component=component, method=method, pattern=pattern, sparsity=sparsity, seed=seed):
                            norms = self.norms(seed) if method == "wanda" else None
                            self.restore()
                            record = sparsify_pipeline(
                                self.pipe,
                                component,
                                sparsity=sparsity,
                                method=method,
                                pattern=pattern,
                                input_norms=norms,
                            )
                            zeros = sum(c.zeros for c in record.components.values())
                            weights = sum(c.weights for c in record.components.values())
                            result = self.evaluate(self.pipe)
                            return {"achieved": zeros / weights, **result}

                        fields = {
                            "stage": "curve",
                            "component": component,
                            "method": method,
                            "pattern": pattern,
                            "sparsity": round(level, 6),
                            "seed": seed,
                        }
                        self.cell(key, fields, compute)
        self.restore()

    # -- 2. depth + sparsity -------------------------------------------------------------------------------------
    def dropped_blocks(self, seed: int, k: int) -> list[int]:
        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan, LayerImportance, ScanSettings, compute_importance

        if k == 0:
            return []
        path = self.output / f"seed-{seed}" / "preference.json"
        if path.is_file():
            importance = LayerImportance.load(path)
        else:
            self.restore()
            prompts = random.Random(seed).sample(self.train_captions, self.args.score_prompts)
            settings = ScanSettings(**self.gen, batch_size=self.args.batch_size, seed=1000 * seed)
            scan = ImportanceScan(
                self.pipe,
                PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
                settings,
                model_id="toy",
                scorer=self.scorer,
                scorer_name="toy",
            )
            importance = compute_importance("preference", scan)
            importance.save(path)
        return importance.least_important(k)

    def combination_plan(self) -> dict:
        """Per blocks removed d: the magnitude sparsity of the remaining Linear weights that brings the transformer's
        non-zero parameter count to that of 3 blocks removed."""
        from diffusers_layerprune.sparsity import sparsifiable_layers

        tf = self.pipe.transformer
        total = sum(p.numel() for p in tf.parameters())
        blocks = tf.transformer_blocks
        per_block = sum(p.numel() for p in blocks[0].parameters())
        per_block_linear = sum(layer.weight.numel() for layer in sparsifiable_layers(blocks[0], "block").values())
        linear = sum(layer.weight.numel() for layer in sparsifiable_layers(tf, "transformer").values())
        depth = len(blocks)
        target = total - 3 * per_block
        plan = {}
        for d in range(4):
            params, eligible = total - d * per_block, linear - d * per_block_linear
            plan[d] = (params - target) / eligible
        return {"target_nonzero": target, "sparsity": plan, "depth": depth}

    def distil(self, student_dir: Path, out: Path, seed: int) -> float:
        if (out / "model_index.json").is_file():
            return 0.0
        out.mkdir(parents=True, exist_ok=True)
        return distil(
            "toy", student_dir, out, steps=self.args.distill_steps, batch_size=self.args.distill_batch_size,
            learning_rate=self.args.learning_rate, seed=seed, log=out.parent / f"{out.name}.log",
        )  # fmt: skip

    def combination(self) -> dict:
        import copy

        from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline, with_transformer
        from diffusers_layerprune.sparsity import read_sparsity_record, sparsify_pipeline

        plan = self.combination_plan()
        for seed in self.combo_seeds:
            for d, sparsity in plan["sparsity"].items():
                folder = self.output / f"seed-{seed}" / f"depth-{d}"
                fields = {"depth": d, "sparsity": sparsity, "seed": seed}

                def student(d=d, sparsity=sparsity, seed=seed):
                    self.restore()
                    dropped = self.dropped_blocks(seed, d)
                    if dropped:
                        pipe = prune_pipeline(self.pipe, pruned_layers=dropped)
                    else:
                        pipe = with_transformer(self.pipe, copy.deepcopy(self.pipe.transformer))
                    record = sparsify_pipeline(pipe, "transformer", sparsity=sparsity) if sparsity > 0 else None
                    return pipe, record, dropped

                def measure(pipe, record):
                    tf = pipe.transformer
                    zeros = sum(int((p == 0).sum()) for p in tf.parameters())
                    nonzero = sum(p.numel() for p in tf.parameters()) - zeros
                    achieved = record.components["transformer"].achieved if record else 0.0
                    return {"nonzero": nonzero, "achieved": achieved}

                def before(student=student, measure=measure):
                    pipe, record, dropped = student()
                    return {"dropped": dropped, **measure(pipe, record), **self.evaluate(pipe)}

                self.cell(f"combo_before|depth={d}|seed={seed}", {"stage": "combo_before", **fields}, before)

                def after(student=student, measure=measure, folder=folder, d=d, seed=seed):
                    pipe, record, dropped = student()
                    student_dir = folder / "student"
                    if not (student_dir / "model_index.json").is_file():
                        extra = {"sparsity.json": record.to_json()} if record else None
                        save_pruned_pipeline(pipe, student_dir, overwrite=True, extra_files=extra)
                    seconds = self.distil(student_dir, folder / "distilled", seed)
                    distilled = load_pipeline(folder / "distilled")
                    distilled.set_progress_bar_config(disable=True)
                    saved = read_sparsity_record(folder / "distilled")
                    measured = measure(distilled, saved)
                    zeros_kept = record is None or (
                        saved is not None
                        and saved.components["transformer"].zeros == record.components["transformer"].zeros
                    )
                    result = self.evaluate(distilled)
                    result["seconds"] += seconds
                    return {
                        "dropped": dropped,
                        **measured,
                        "zeros_kept": zeros_kept,
                        "train_seconds": seconds,
                        **result,
                    }

                self.cell(f"combo_after|depth={d}|seed={seed}", {"stage": "combo_after", **fields}, after)

                if d in (1, 2) and seed in self.order_seeds:

                    def distil_first(folder=folder, d=d, sparsity=sparsity, seed=seed, measure=measure):
                        self.restore()
                        dropped = self.dropped_blocks(seed, d)
                        dense_dir = folder / "dense-student"
                        if not (dense_dir / "model_index.json").is_file():
                            save_pruned_pipeline(
                                prune_pipeline(self.pipe, pruned_layers=dropped), dense_dir, overwrite=True
                            )
                        seconds = self.distil(dense_dir, folder / "dense-distilled", seed)
                        pipe = load_pipeline(folder / "dense-distilled")
                        pipe.set_progress_bar_config(disable=True)
                        record = sparsify_pipeline(pipe, "transformer", sparsity=sparsity)
                        result = self.evaluate(pipe)
                        result["seconds"] += seconds
                        return {"dropped": dropped, **measure(pipe, record), "train_seconds": seconds, **result}

                    self.cell(
                        f"combo_distil_then_sparsify|depth={d}|seed={seed}",
                        {"stage": "combo_distil_then_sparsify", **fields},
                        distil_first,
                    )
                if not self.args.keep_models:
                    shutil.rmtree(folder, ignore_errors=True)
        self.restore()
        return plan

    def folder_sizes(self) -> dict:
        import tempfile

        from diffusers_layerprune.modeling import save_pruned_pipeline
        from diffusers_layerprune.sparsity import sparsify_pipeline

        def size(path: Path) -> int:
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

        def gz(path: Path, target: Path) -> int:
            with tarfile.open(target, "w:gz") as tar:
                tar.add(path, arcname=path.name)
            return target.stat().st_size

        with tempfile.TemporaryDirectory(dir=self.output) as tmp:
            tmp = Path(tmp)
            self.restore()
            save_pruned_pipeline(self.pipe, tmp / "dense")
            record = sparsify_pipeline(self.pipe, "both", sparsity=0.5)
            save_pruned_pipeline(self.pipe, tmp / "sparse", extra_files={"sparsity.json": record.to_json()})
            self.restore()
            return {
                "dense_bytes": size(tmp / "dense"),
                "sparse_bytes": size(tmp / "sparse"),
                "dense_gz_bytes": gz(tmp / "dense", tmp / "dense.tar.gz"),
                "sparse_gz_bytes": gz(tmp / "sparse", tmp / "sparse.tar.gz"),
            }

    def params(self) -> dict:
        from diffusers_layerprune.sparsity import sparsifiable_layers

        out = {}
        for name in ("text_encoder", "transformer"):
            module = getattr(self.pipe, name)
            out[name] = sum(p.numel() for p in module.parameters())
            out[f"{name}_sparsifiable"] = sum(x.weight.numel() for x in sparsifiable_layers(module, name).values())
        return out

    def run(self) -> dict:
        import torch

        self.output.mkdir(parents=True, exist_ok=True)
        self.setup()
        with torch.no_grad():
            self.curves()
        combination = self.combination() if self.combo_seeds else None
        sizes = self.folder_sizes()
        cells = [c for c in self.cells.records.values() if c.get("stage") != "score"]
        result = {
            "model": "toy",
            "num_images": len(self.captions),
            "settings": {
                "seeds": self.seeds,
                "combo_seeds": self.combo_seeds,
                "order_seeds": self.order_seeds,
                "calibration_prompts": self.args.calibration_prompts,
                "score_prompts": self.args.score_prompts,
                "eval_seed": self.args.eval_seed,
                "distill_steps": self.args.distill_steps,
                "distill_batch_size": self.args.distill_batch_size,
                "learning_rate": self.args.learning_rate,
                **self.gen,
            },
            "params": self.params(),
            "combination": combination,
            "folder_sizes": sizes,
            "cells": cells,
            "total_minutes": sum(c.get("seconds", 0) for c in cells) / 60,
            "runtime_note": self.args.runtime_note or _load_note(cells),
            "machine": f"{os.cpu_count()}-core CPU",
        }
        return result


def _load_note(cells: list[dict]) -> str | None:
    loads = [c["load_average"] for c in cells if "load_average" in c]
    if not loads:
        return None
    return f"1-minute load average {min(loads):.1f}-{max(loads):.1f}, mean {statistics.mean(loads):.1f}, over the cells"


def finish(result: dict, args) -> None:
    if args.runtime_note:
        result["runtime_note"] = args.runtime_note
    result["claims"] = check_claims(result["cells"], result["num_images"])
    if result.get("combination"):
        result["combination"]["summary"] = combination_summary(result)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=1) + "\n")
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_plot(result, doc.with_suffix(".png"))
    doc.write_text(render_page(result))
    for claim in result["claims"]:
        print(f"{claim['verdict']:>14}: {claim['claim']}")
    for line in (result.get("combination") or {}).get("summary", []):
        print(line)
    print(f"wrote {results}, {doc} and {doc.with_suffix('.png')}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="Wanda calibration seeds")
    p.add_argument("--combo-seeds", default="0,1,2", help='depth + sparsity seeds ("" skips that part)')
    p.add_argument("--calibration-prompts", type=int, default=64)
    p.add_argument("--score-prompts", type=int, default=64, help="training captions of the preference scan")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out captions judged (default: all 216)")
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=72)
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--order-seeds", default="0", help='seeds of the distil-then-sparsify check (d = 1, 2; "" skips it)')
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", default="runs/sparsity_toy", help="cells and models")
    p.add_argument("--results", default="benchmarks/results/sparsity_toy.json")
    p.add_argument("--doc", default="docs/sparsity.md", help="the generated page; its plot goes next to it (.png)")
    p.add_argument("--report-only", action="store_true", help="rebuild the doc and the plot from --results")
    p.add_argument("--runtime-note", default=None, help="how busy the machine was, stated beside the runtime")
    p.add_argument("--keep-models", action="store_true", help="keep the students and distilled models on disk")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_only:
        result = json.loads(Path(args.results).read_text())
    else:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        started = time.time()
        result = Benchmark(args).run()
        print(f"finished in {(time.time() - started) / 60:.1f} min", flush=True)
    finish(result, args)


if __name__ == "__main__":
    main()
