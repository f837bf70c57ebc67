"""Prompt-routed depth on the bundled toy world: routed models (K = 2, 4, 8 codes sharing the 12 blocks' weights)
against the best static pruned model of the same depth, at a mean of 9 and 7 blocks of 12. Writes
benchmarks/results/routing_toy.json, docs/routing.md and docs/routing.png.

1. **Quality.** For each budget B in (9, 7) and K: ``train_routed`` (router + codes, weights frozen; 300 steps,
   uniform optimal-transport marginals) on the 360 training captions, judged on the 216 held-out captions with the
   noise of reproduce_paper.py (seed ``100000 + 1000 s + i``), so the static numbers of
   benchmarks/results/reproduce_paper.json (same captions, same noise, same sampler) compare image for image. Then
   the shared weights are fine-tuned with hard routing for the distillation budget the static models got (400
   steps, batch 16, learning rate 2e-4, AdamW, train_distill's losses) and judged again.
2. **What the codes learned**: depth and share of each code, how much each caption attribute tells about the code
   (normalised mutual information), and whether captions the full model gets wrong go to deeper codes.
3. **Balance** of the held-out assignment with and without the optimal-transport term (K = 4, B = 9).
4. **Throughput** of a mixed batch of 64 held-out captions: routed and grouped, each caption alone, the static
   9-block model and the full model, interleaved in one run (ratios).
5. **Budget on unseen prompts**, for every router in ``OUTPUT/routers``: mean blocks run and code shares on the
   training and the held-out captions, and with the budget enforced per batch (``enforce_budget``: the whole
   held-out set as one batch, and batches of 16), judged where the enforced codes differ (weights not fine-tuned).

6. **Routing over elastic depths**: the page's section of that name renders benchmarks/results/elastic_routing_toy.json
   (benchmarks/elastic_routing_toy.py: a router over the depths of one elastic model against the static student of
   the same depth), when it exists.

Cells are appended to ``OUTPUT/cells.jsonl`` as they finish; a re-run skips finished cells. ``--report-only``
rebuilds the doc and the plot from benchmarks/results/routing_toy.json.

    python benchmarks/routing_toy.py                    # seed 0 everything, then seeds 1, 2 (>60 min, 2-core CPU)
    python benchmarks/routing_toy.py --seeds 0          # one seed (~25 min)
    python benchmarks/routing_toy.py --from-cells       # the page from the cells finished so far (stopped run)
    python benchmarks/routing_toy.py --report-only
    python benchmarks/routing_toy.py --budget-check     # only part 5, for the routers already fitted (~10 min)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits stall badly on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]  # this checkout's package, then benchmarks/
from paper.cells import Cells  # noqa: E402  (the append-only cell store of every toy-world grid)
from routing_study.claims import (  # noqa: E402,F401  (the rules; tests read them here)
    _ints,
    aggregate,
    balance,
    budget_rows,
    nmi,
    overall_verdict,
    verdicts,
)
from routing_study.report import RESULT, budget_section, finish  # noqa: E402,F401
from routing_study.run import Experiment  # noqa: E402

STATIC = ROOT / "benchmarks" / "results" / "reproduce_paper.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", default="runs/routing_toy", help="cells and fitted routers")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--num-codes", default="2,4,8")
    p.add_argument("--budgets", default="9,7")
    p.add_argument("--steps", type=int, default=300, help="router/code steps")
    p.add_argument("--finetune-steps", type=int, default=400, help="the static models' distillation steps")
    p.add_argument("--finetune-seeds", default="0", help="seeds whose routed models are also fine-tuned")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core CPU)")
    p.add_argument("--throughput-repeats", type=int, default=3)
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--budget-check",
        action="store_true",
        help="measure part 5 for the routers in --output/routers, then update the page (nothing is fitted)",
    )
    p.add_argument("--serving-batch", type=int, default=16, help="batch size of part 5's per-batch enforcement")
    p.add_argument(
        "--from-cells", action="store_true", help="aggregate the finished cells of --output; compute nothing new"
    )
    return p.parse_args(argv)


def settings_from_cells(cells: list[dict], args, started: float | None = None) -> dict:
    seeds = sorted({int(c["key"].split("seed=")[1].split("|")[0]) for c in cells if c["key"].startswith("routed|")})
    ft = sorted({int(c["key"].split("seed=")[1].split("|")[0]) for c in cells if c["key"].startswith("finetuned|")})
    busy = 0.0
    for c in cells:
        if isinstance(c.get("seconds"), (int, float)):
            busy += c["seconds"] + (c.get("fit_seconds") or 0) + c.get("finetune_seconds", 0)
        elif isinstance(c.get("seconds"), dict):
            busy += sum(sum(v) for v in c["all_seconds"].values())
    return {
        "steps": args.steps,
        "finetune_steps": args.finetune_steps,
        "seeds": seeds,
        "finetune_seeds": ft,
        "machine": f"{os.cpu_count()}-core CPU shared with other jobs, {args.threads} torch thread(s)",
        "minutes": busy / 60,
        "wall_minutes_this_run": None if started is None else (time.time() - started) / 60,
        "command_args": command_args(sys.argv[1:]),
    }


def command_args(argv: list[str]) -> str:
    """The options of this run as the page shows them: without --report-only / --from-cells, and without --output
    (a folder on the machine that ran it: the page gives the default)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--output":
            skip = True
        elif not a.startswith("--output=") and a not in ("--report-only", "--from-cells"):
            out.append(a)
    return " ".join(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.report_only:
        finish(json.loads(RESULT.read_text()))
        return
    static = json.loads(STATIC.read_text())
    if args.budget_check:  # part 5 only, for the routers already fitted; the rest of the page is kept
        ex = Experiment(args)
        ex.budget_cells()
        cells = list(ex.cells.records.values())
        result = json.loads(RESULT.read_text())
        result["budget_check"] = budget_rows(cells, {c["key"]: c for c in cells})
        finish(result)
        return
    if args.from_cells:
        from diffusers_layerprune.toy import world

        cells = list(Cells(Path(args.output) / "cells.jsonl").records.values())
        result = aggregate(cells, static, world.captions("heldout"), args)
        result["settings"] = settings_from_cells(cells, args)
        finish(result)
        return
    ex = Experiment(args)
    started = time.time()
    seeds, ft_seeds = _ints(args.seeds), _ints(args.finetune_seeds)
    budgets, ks = _ints(args.budgets), _ints(args.num_codes)
    # Cheapest evidence first, so that a run stopped early still answers most questions: the first seed's routed
    # models, the balance ablation and the throughput, then the fine-tuning, then the other seeds.
    ex.teacher_cell(0)
    first = seeds[0]
    for budget in budgets:
        for k in ks:
            ex.routed_cell(budget, k, first)
    for ot in ("none", "budget"):
        ex.routed_cell(9, 4, first, ot)
    ex.throughput_cell(static["plans"]["preference"]["0.25"]["0"])
    for seed in seeds:
        for budget in budgets:
            for k in ks:
                ex.routed_cell(budget, k, seed)
                if seed in ft_seeds:
                    ex.finetuned_cell(budget, k, seed)
    ex.budget_cells()
    cells = list(ex.cells.records.values())
    result = aggregate(cells, static, ex.heldout, args)
    result["settings"] = settings_from_cells(cells, args, started)
    finish(result)


if __name__ == "__main__":
    main()
