"""Routing over elastic depths on the toy world: one elastic model (nested depths 9, 8, 7 of the 12-block toy teacher,
distilled in one run), a prompt router that picks one of its depths per prompt (``layerprune route`` on the elastic
folder), against the static student of the same average depth (the elastic model's own depth 8, and optionally a
depth-8 student distilled separately), judged on the held-out captions over seeds. Writes
benchmarks/results/elastic_routing_toy.json; ``routing_toy.py --report-only`` puts its section into docs/routing.md.

For each seed ``s``:

1. Elastic: prune the toy teacher to its 9 most important blocks (preference importance, 64 training captions, seed
   0; one file for every seed, the one benchmarks/elastic_toy.py uses) and distil it with ``train_distill
   --elastic_depths 9,8,7 --importance FILE`` (feature KD at the largest depth, the default) for ``--steps`` steps
   with the recipe of elastic_toy.py (batch 16, lr 2e-4, cosine with 5% warm-up, prompt-only KD, seed s).
2. Router: ``route_to_folder`` on the elastic folder (codes = the three depths, router only; ``--router-steps``
   steps, batch 16, uniform optimal-transport marginals, budget ``--budget`` blocks) on the first
   ``--router-prompts`` toy training captions, seed s.
3. Judge each depth on the first ``--eval-prompts`` held-out captions with the noise of reproduce_paper.py (image i
   of seed s from seed ``100000 + 1000 s + i``). A routed image is the image of its caption at the depth the router
   picks (same noise), so the routed model's verdicts are read from the depths' verdicts, caption by caption. Routed
   is judged twice: plain routing (each caption on its own: the held-out mean depth can exceed the budget a little)
   and with the budget enforced on the held-out set as one batch (``enforce_budget=True``: mean <= budget).
4. Controls, from the same verdicts: the router's held-out assignment shuffled over the captions (the same mix of
   depths, prompts assigned at random; mean over 2000 shuffles), and the best assignment of depths to captions at the
   same mean depth that knows the verdicts (an upper bound of what any router could get from these depths).

Statistics: routed - static (all four right) with a 95% interval from a paired bootstrap over the (seed, caption)
pairs, and per-seed differences; "beats" / "loses" when the interval excludes 0, otherwise "within noise".

    # what benchmarks/results/elastic_routing_toy.json holds (about 11 CPU-minutes of work recorded, plus start-up)
    OMP_NUM_THREADS=1 python benchmarks/elastic_routing_toy.py --seeds 0 --separate &   # one process per seed
    OMP_NUM_THREADS=1 python benchmarks/elastic_routing_toy.py --seeds 1 --separate &
    OMP_NUM_THREADS=1 python benchmarks/elastic_routing_toy.py --seeds 2 --separate; wait
    python benchmarks/elastic_routing_toy.py --report-only --separate    # the JSON from the cells of every seed
    python benchmarks/routing_toy.py --report-only                       # docs/routing.md with its section
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elastic_routing_study.report import print_report  # noqa: E402
from elastic_routing_study.run import Bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "elastic_routing_toy.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--depths", default="9,8,7", help="nested depths of the elastic run, largest first")
    p.add_argument("--budget", type=float, default=8.0, help="mean blocks per prompt of the router")
    p.add_argument("--steps", type=int, default=200, help="elastic distillation steps")
    p.add_argument("--router-steps", type=int, default=300)
    p.add_argument("--router-prompts", type=int, default=360, help="toy training captions the router is fitted on")
    p.add_argument("--separate", action="store_true", help="also distil a static student of depth --budget")
    p.add_argument("--eval-prompts", type=int, default=216)
    p.add_argument("--work", default="runs/elastic_routing", help="cells and models")
    p.add_argument("--importance", default="runs/elastic_route/importance_preference.json")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--results", default=str(RESULTS))
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    bench = Bench(args)
    bench.setup()
    if not args.report_only:
        for seed in bench.seeds:
            bench.run_seed(seed)
        return
    rep = bench.report()
    Path(args.results).write_text(json.dumps(rep, indent=1) + "\n")
    print_report(rep)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
