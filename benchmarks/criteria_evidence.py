"""Which criterion finds the blocks that matter? Judge accuracy of the toy teacher with the k least important blocks
dropped, per criterion, next to the mean over random draws (docs/criteria.md).

1. Score every block of the toy teacher with every criterion (one shared scan: prompts encoded once; the same
   settings as ``layerprune score --model toy``): the first ``--score-prompts`` held-out captions, seeds 0..N-1.
   The importance files are written to ``--importance-dir`` and reused when present (as ``layerprune score`` writes
   them, so ``layerprune prune --importance`` can turn any of them into a model).
2. Drop the ``k = round(ratio x depth)`` least important blocks (plan one_shot; for angular_distance also the
   ``span`` plan) and generate every held-out caption with seeds ``--eval-seed + i`` (other noise than scoring),
   then judge the images (colour, position, shape, size; overall = all four right) and score them with the toy
   scorer. Skipping blocks computes exactly what the pruned model computes (tests/test_modeling.py), so no pruned
   copies are saved.

    python benchmarks/criteria_evidence.py                  # toy world, k = 25% of the blocks, 5 random draws
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from toybench import (  # benchmarks/ is on sys.path when run as a script
    load_with_settings,
    render,
    saved_or_computed,
    write_result,
)

from diffusers_layerprune.blocks import skip_blocks
from diffusers_layerprune.data import PromptSet
from diffusers_layerprune.importance import (
    CRITERIA_MODULES,
    ImportanceScan,
    LayerImportance,
    ScanSettings,
    compute_importance,
    plan_blocks,
)
from diffusers_layerprune.importance.stability import spearman_rho
from diffusers_layerprune.scorers import SCORERS, load_scorer


def toy_scorer():
    if "toy" in SCORERS:
        return load_scorer("toy")
    from diffusers_layerprune.toy import toy_scorer_path

    return load_scorer(toy_scorer_path(), name="toy")


def heldout_captions() -> list[str]:
    from diffusers_layerprune.toy import world

    return world.captions("heldout")


@torch.no_grad()
def evaluate(pipe, scorer, captions: list[str], dropped: list[int], settings: ScanSettings, eval_seed: int) -> dict:
    """Judge accuracy and toy preference score of the teacher with ``dropped`` blocks skipped."""
    from diffusers_layerprune.toy.judge import judge

    with skip_blocks(pipe.transformer, dropped):
        images = render(pipe, captions, settings, [eval_seed + i for i in range(len(captions))], batch_size=72)
    report = judge(images, captions)
    return {
        "dropped": dropped,
        "accuracy": report.accuracy,
        "toy_score": float(scorer(images, captions).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--ratio", type=float, default=0.25, help="fraction of the blocks to drop")
    parser.add_argument("--score-prompts", type=int, default=64, help="held-out captions used for scoring")
    parser.add_argument("--random-draws", type=int, default=5)
    parser.add_argument("--eval-seed", type=int, default=10_000, help="caption i is judged with seed EVAL_SEED + i")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--criteria", default=",".join(c for c in CRITERIA_MODULES if c != "random"))
    parser.add_argument("--importance-dir", default="runs/criteria")
    parser.add_argument("--output", default="benchmarks/results/criteria_toy.json")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.time()
    pipe, settings = load_with_settings(args.model, args.batch_size)
    captions = heldout_captions()
    scorer = toy_scorer()
    prompts = PromptSet(captions[: args.score_prompts], "toy:heldout", meta={"limit": args.score_prompts})
    scan = ImportanceScan(pipe, prompts, settings, model_id=args.model, scorer=scorer, scorer_name="toy")
    depth = scan.num_layers
    k = round(args.ratio * depth)
    folder = Path(args.importance_dir)

    importances: dict[str, LayerImportance] = {}
    timings: dict[str, float] = {}
    for name in args.criteria.split(","):
        importances[name], seconds = saved_or_computed(folder / f"{name}.json", partial(compute_importance, name, scan))
        if seconds is not None:
            timings[name] = seconds
            print(f"{name}: {seconds:.0f} s, least important {k}: {importances[name].least_important(k)}")

    plans = {name: plan_blocks(imp, k, "one_shot") for name, imp in importances.items()}
    if "angular_distance" in importances:
        plans["angular_distance (span)"] = plan_blocks(importances["angular_distance"], k, "span")
    random_plans = []
    for seed in range(args.random_draws):
        random_scan = ImportanceScan(pipe, None, ScanSettings(seed=seed), model_id=args.model, show_progress=False)
        random_plans.append(plan_blocks(compute_importance("random", random_scan), k, "one_shot"))

    cache: dict[tuple, dict] = {}

    def judged(dropped: list[int]) -> dict:
        key = tuple(dropped)
        if key not in cache:
            cache[key] = evaluate(pipe, scorer, captions, dropped, settings, args.eval_seed)
        return cache[key]

    full = judged([])
    rows = {name: judged(dropped) for name, dropped in plans.items()}
    # The judge's own view of each single block (measured on the evaluation images, so it is a reference, not a
    # criterion): how well each criterion's values rank the blocks by this drop.
    single_drop = [full["accuracy"]["overall"] - judged([b])["accuracy"]["overall"] for b in range(depth)]
    oracle = sorted(range(depth), key=lambda b: (single_drop[b], b))[:k]
    rows["reference: k smallest single-block judge drops"] = judged(sorted(oracle))
    spearman = {name: spearman_rho(imp.values, single_drop) for name, imp in importances.items()}
    draws = [judged(dropped) for dropped in random_plans]
    random_overall = [d["accuracy"]["overall"] for d in draws]
    random_summary = {
        "dropped": random_plans,
        "overall_mean": statistics.mean(random_overall),
        "overall_std": statistics.pstdev(random_overall),
        "attribute_means": {
            a: statistics.mean(d["accuracy"][a] for d in draws) for a in ("colour", "position", "shape", "size")
        },
        "toy_score_mean": statistics.mean(d["toy_score"] for d in draws),
    }

    print("\nsingle-block judge drop (overall accuracy, full minus block skipped):")
    print(" ".join(f"{b}:{d:+.3f}" for b, d in enumerate(single_drop)))
    print("Spearman rho of criterion values with the single-block judge drop:")
    for name, rho in spearman.items():
        print(f"  {name:<18} {rho:+.2f}")

    print(f"\n{args.model}: {depth} blocks, k = {k} dropped; judge on {len(captions)} held-out captions")
    print("| criterion | dropped blocks | overall | colour | position | shape | size | toy score |")
    print("|---|---|---|---|---|---|---|---|")

    def line(name: str, r: dict) -> None:
        a = r["accuracy"]
        print(f"| {name} | {r['dropped']} | {a['overall']:.3f} | {a['colour']:.3f} | {a['position']:.3f} | "
              f"{a['shape']:.3f} | {a['size']:.3f} | {r['toy_score']:.4f} |")  # fmt: skip

    line("full model (none dropped)", full)
    for name, r in sorted(rows.items(), key=lambda item: -item[1]["accuracy"]["overall"]):
        line(name, r)
    m = random_summary["attribute_means"]
    print(f"| random (mean of {args.random_draws}) | - | {random_summary['overall_mean']:.3f} "
          f"± {random_summary['overall_std']:.3f} | {m['colour']:.3f} | {m['position']:.3f} | {m['shape']:.3f} | "
          f"{m['size']:.3f} | {random_summary['toy_score_mean']:.4f} |")  # fmt: skip

    result = {
        "model": args.model,
        "num_layers": depth,
        "k": k,
        "ratio": args.ratio,
        "settings": settings.__dict__,
        "score_prompts": args.score_prompts,
        "eval_captions": len(captions),
        "eval_seed": args.eval_seed,
        "full": full,
        "criteria": rows,
        "random": random_summary,
        "importance_values": {name: imp.values for name, imp in importances.items()},
        "single_block_judge_drop": single_drop,
        "spearman_with_single_block_judge_drop": spearman,
        "scoring_seconds": timings,
        "total_seconds": time.time() - started,
    }
    write_result(args.output, result, f" ({result['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
