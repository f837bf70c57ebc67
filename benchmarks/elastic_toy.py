"""Elastic depth on the toy world: one elastic run (nested depths, sandwich rule) against students distilled
separately at each depth, judged on the held-out captions over seeds; training cost of both measured in the same
invocation. Writes benchmarks/results/elastic_toy.json (docs/elastic.md discusses it).

For each seed ``s``:

1. The preference importance of the 12-block toy teacher (``layerprune score --model toy``, 64 training captions,
   seed 0; one file for every seed) orders the removals: depth 9 keeps its 9 most important blocks, depth 7 removes
   the next two of those (elastic.nested_kept_layers), so 7 is a subset of 9.
2. Separate: prune to each depth and distil it with ``training/train_distill.py`` for ``--steps`` steps (the recipe of
   benchmarks/reproduce_paper.py: batch 16, lr 2e-4, cosine with 5% warm-up, output + feature KD, prompt-only on the
   toy training captions, seed s).
3. Elastic: distil the depth-9 student once with ``--elastic_depths 9,7 --importance FILE`` for each budget of
   ``--elastic-steps`` (the same recipe), then ``layerprune extract`` each depth.
4. Judge every model on the first ``--eval-prompts`` held-out captions with noise seeds ``100000 + 1000 s + i`` (those
   of reproduce_paper.py): all-four-right accuracy and toy preference score; also the teacher and the undistilled
   pruned models for reference.

Cost: each training run's CPU seconds (user + system of the child process, less sensitive than wall time to the other
jobs sharing the machine) and wall seconds; the ratio is elastic / (sum of the separate runs), per seed.

Statistics: per depth and budget, the difference elastic - separate in all-four-right accuracy, with a 95% interval
from a paired bootstrap over (seed, caption) pairs (same caption, same noise, both models), and the per-seed means
with a t interval over seeds. "Within noise" means the bootstrap interval contains 0 or lies above it.

Each invocation does at most ``--max-trainings`` training runs (default: all) and keeps every judged cell in
``WORK/cells.jsonl``, so the grid can be filled in pieces shorter than ten minutes. ``--variant`` picks the elastic
feature KD (``''``: at every depth, ``featlargest``: at the largest only) and the other elastic flags
(``VARIANTS`` in elastic_study/run.py). What benchmarks/results/elastic_toy.json
holds (repeat each line until it prints a table; about 70 CPU-minutes in all on a 2-core machine):

    python benchmarks/elastic_toy.py --max-trainings 1 --elastic-steps 200,80,400
    python benchmarks/elastic_toy.py --max-trainings 1 --elastic-steps 200,80 --variant featlargest
    python benchmarks/elastic_toy.py --report-variants ,featlargest --elastic-steps "200,80,400;200,80"

Five depths (docs/elastic.md, "Five depths"; benchmarks/results/elastic_toy_depths5.json; about 35 CPU-minutes; with
three or more depths an elastic step trains the largest, the smallest and one middle depth drawn at random, and its
measured cost is the mean over the middle depths; repeat it until it prints the table):

    python benchmarks/elastic_toy.py --depths 11,10,9,8,7 --elastic-steps 140,200,100,400 --elastic-own-cache \\
        --variant featlargest --work runs/elastic5 --max-trainings 3 \\
        --results benchmarks/results/elastic_toy_depths5.json

Balancing the depths' losses (docs/elastic.md, "Balancing the depths' losses"; one JSON per variant,
benchmarks/results/elastic_toy_depths5_VARIANT.json; the separate students are trained once in the --work folder and
reused by every later variant; about 10 CPU-minutes per variant and budget after them):

    python benchmarks/elastic_toy.py --depths 11,10,9,8,7 --elastic-steps 140 --elastic-own-cache \\
        --variant normalized --work runs/elastic6 --max-trainings 3 \\
        --results benchmarks/results/elastic_toy_depths5_normalized.json
    # likewise --variant normout and mw211 (--elastic-steps 140), normalized-mw211 (--elastic-steps 140,100,200);
    # VARIANTS in elastic_study/run.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "elastic_toy.json"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/: the elastic study and the paper package
from elastic_study.report import markdown_table, print_report  # noqa: E402
from elastic_study.run import VARIANTS, Bench  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--depths", default="9,7", help="nested depths, largest first")
    p.add_argument("--steps", type=int, default=200, help="steps of each separately distilled student")
    p.add_argument("--elastic-steps", default="200,80", help="budgets of the elastic run (steps), comma-separated")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--eval-prompts", type=int, default=216)
    p.add_argument("--max-trainings", type=int, default=None, help="stop after this many training runs")
    p.add_argument("--work", default="runs/elastic_toy", help="cells, importance file, models")
    p.add_argument(
        "--elastic-own-cache",
        action="store_true",
        help="the elastic run builds its own text-embedding and teacher-latent cache (its whole-process cost then "
        "includes the build that the seed's first separate run pays; without it, it reuses theirs)",
    )
    p.add_argument("--variant", default="", choices=list(VARIANTS), help="elastic-training variant")
    p.add_argument(
        "--report-variants",
        default=None,
        help="write the combined report of these variants (comma-separated, '' for the default), --elastic-steps "
        "giving each variant's budgets separated by ';'",
    )
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", default=str(RESULTS), help="the JSON to write")
    return p.parse_args(argv)


def combined(argv) -> dict:
    """The published JSON: one report per elastic-training variant (``--variant`` values, comma-separated in
    ``--report-variants``), each over its own budgets (``--elastic-steps`` per variant, ``;``-separated)."""
    args = parse_args(argv)
    variants = args.report_variants.split(",")
    budgets = args.elastic_steps.split(";")
    reports = []
    for variant, steps in zip(variants, budgets, strict=True):
        one = parse_args([*argv, "--variant", variant, "--elastic-steps", steps])
        bench = Bench(one)
        bench.setup()
        reports.append(bench.report())
    names = {"": "feature_kd_all", "featlargest": "feature_kd_largest"}
    return {"variants": {names[v]: r for v, r in zip(variants, reports, strict=True)}}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_variants is not None:
        result = combined([a for a in (argv or sys.argv[1:])])
        Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
        for name, report in result["variants"].items():
            print(f"\n## elastic feature KD: {name}")
            print_report(report)
            print(markdown_table(report))
        print(f"wrote {args.results}")
        return
    bench = Bench(args)
    if not args.report_only:
        bench.setup()
        if not bench.run():
            print("not finished: run again to continue", flush=True)
            return
    else:
        bench.setup()
    report = bench.report()
    Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    print(markdown_table(report))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
