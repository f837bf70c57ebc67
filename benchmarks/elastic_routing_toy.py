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
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elastic_study.claims import _paired  # noqa: E402  (the elastic study's paired comparison)
from elastic_study.toy import ToyTeacher, score_importance, timed_distil  # noqa: E402  (as elastic_toy.py does)
from paper.cells import Cells, mean_std  # noqa: E402

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


class Bench(ToyTeacher):
    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(args.work)
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self.depths = [int(d) for d in args.depths.split(",")]
        self.pipe = None

    def cells(self, seed: int) -> Cells:
        return Cells(self.work / f"cells-seed{seed}.jsonl")

    def importance_file(self) -> Path:
        return score_importance(Path(self.args.importance))

    def setup(self) -> None:
        self.load_teacher(Path(self.args.importance), self.args.eval_prompts, self.depths)

    def judge(self, pipe, dropped, seed: int) -> dict:
        """Verdicts and toy score of every held-out caption (``dropped``: blocks of ``pipe`` skipped)."""
        from diffusers_layerprune.toy.judge import judge

        start = time.process_time()
        images = self.heldout_images(pipe, dropped, seed)
        report = judge(images, self.captions)
        scores = self.scorer(images, self.captions)
        return {
            "accuracy": {k: float(v) for k, v in report.accuracy.items()},
            "correct": [bool(x) for x in report.correct["overall"]],
            "scores": [float(x) for x in scores],
            "toy_score": float(scores.mean()),
            "cpu_seconds": time.process_time() - start,
        }

    def train(self, student: Path, output: Path, seed: int, extra=()) -> dict:
        cost_file = output.parent / f"{output.name}.cost.json"
        if (output / "model_index.json").is_file() and cost_file.is_file():
            return json.loads(cost_file.read_text())
        cost = timed_distil(student, output, steps=self.args.steps, batch_size=16, learning_rate=2e-4, seed=seed,
                            extra=extra)  # fmt: skip
        cost_file.write_text(json.dumps(cost))
        print(f"  trained {output.name}: {cost['cpu_seconds']:.0f} CPU-s", flush=True)
        return cost

    def run_seed(self, seed: int) -> None:
        from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline
        from diffusers_layerprune.routing import RoutingSettings, route_to_folder
        from diffusers_layerprune.routing.router import pooled_text_embedding

        cells = self.cells(seed)
        folder = self.work / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        pruned = folder / f"pruned-{self.depths[0]}"
        if not (pruned / "model_index.json").is_file():
            save_pruned_pipeline(
                prune_pipeline(self.pipe, kept_layers=self.kept[self.depths[0]]), pruned, overwrite=True
            )
        tag = "-".join(map(str, self.depths))
        elastic = folder / f"elastic-{tag}"
        extra = ["--elastic_depths", ",".join(map(str, self.depths)), "--importance", self.importance_file()]
        cost = self.train(pruned, elastic, seed, extra)
        pipe = None
        largest = self.kept[self.depths[0]]
        for depth in self.depths:
            key = f"elastic-{depth}|seed={seed}"
            if cells.get(key) is None:
                pipe = pipe or self._load(elastic)
                dropped = [i for i, b in enumerate(largest) if b not in set(self.kept[depth])]
                cells.put(key, {**self.judge(pipe, dropped, seed), "train": cost})
                print(f"  {key}: {100 * cells.get(key)['accuracy']['overall']:.1f}%", flush=True)
        key = f"router|seed={seed}"
        if cells.get(key) is None:
            routed_dir = folder / f"routed-b{self.args.budget:g}"
            if routed_dir.exists():
                shutil.rmtree(routed_dir)
            from diffusers_layerprune.toy import world

            prompts_file = folder / "router_prompts.txt"
            prompts_file.write_text("\n".join(world.captions("train")[: self.args.router_prompts]) + "\n")
            start = time.process_time()
            settings = RoutingSettings(num_codes=None, budget=self.args.budget, steps=self.args.router_steps, seed=seed)
            routed = route_to_folder(elastic, routed_dir, prompts=str(prompts_file), settings=settings, log=print)
            fit_cpu = time.process_time() - start
            record = routed.routing.record
            pooled = pooled_text_embedding(*self.embeds)
            codes = routed.routing.route(pooled).tolist()
            enforced = routed.routing.route(pooled, enforce_budget=True).tolist()
            code_depths = [len(c.kept_layers) for c in record.codes]
            cells.put(key, {
                "code_depths": code_depths, "heldout_codes": codes, "heldout_codes_enforced": enforced,
                "train_mean_blocks": record.mean_blocks, "depth_penalty": record.depth_penalty,
                "train_shares": [c.share for c in record.codes], "fit_cpu_seconds": fit_cpu,
                "fit_seconds": record.training.get("fit_seconds"),
            })  # fmt: skip
            mean = statistics.mean(code_depths[c] for c in codes)
            print(f"  {key}: train mean {record.mean_blocks:.2f}, held-out mean {mean:.2f}", flush=True)
        if self.args.separate:
            depth = int(self.args.budget)
            key = f"separate-{depth}|seed={seed}"
            if cells.get(key) is None:
                src = folder / f"pruned-{depth}"
                if not (src / "model_index.json").is_file():
                    kept = self.importance.most_important(depth)
                    save_pruned_pipeline(prune_pipeline(self.pipe, kept_layers=kept), src, overwrite=True)
                out = folder / f"separate-{depth}"
                cost = self.train(src, out, seed)
                cells.put(key, {**self.judge(self._load(out), [], seed), "train": cost})
                print(f"  {key}: {100 * cells.get(key)['accuracy']['overall']:.1f}%", flush=True)

    # -- report ---------------------------------------------------------------------------------------------------
    def report(self) -> dict:
        seeds = [s for s in self.seeds if self.cells(s).get(f"router|seed={s}")]
        by_seed = {s: self.cells(s) for s in seeds}
        depth_of = {d: i for i, d in enumerate(self.depths)}

        def depth_cell(s, d):
            return by_seed[s].get(f"elastic-{d}|seed={s}")

        def composed(s, codes, code_depths) -> dict:
            """The routed model's record: each caption's verdict and score at the depth it is routed to."""
            cells = [depth_cell(s, code_depths[c]) for c in codes]
            correct = [cell["correct"][i] for i, cell in enumerate(cells)]
            scores = [cell["scores"][i] for i, cell in enumerate(cells)]
            return {
                "accuracy": {"overall": statistics.mean(correct)},
                "correct": correct,
                "toy_score": statistics.mean(scores),
                "mean_blocks": statistics.mean(code_depths[c] for c in codes),
            }

        routed, enforced, shuffled, oracle, static = {}, {}, {}, {}, {}
        for s in seeds:
            r = by_seed[s].get(f"router|seed={s}")
            depths = r["code_depths"]
            routed[s] = composed(s, r["heldout_codes"], depths)
            enforced[s] = composed(s, r["heldout_codes_enforced"], depths)
            # the same mix of depths, assigned to captions at random
            rng = random.Random(s)
            codes = list(r["heldout_codes_enforced"])
            draws = []
            for _ in range(2000):
                rng.shuffle(codes)
                draws.append(composed(s, codes, depths)["accuracy"]["overall"])
            shuffled[s] = {"accuracy": statistics.mean(draws), "p_routed_at_or_below": statistics.mean(
                d >= enforced[s]["accuracy"]["overall"] for d in draws)}  # fmt: skip
            oracle[s] = self._oracle(s, depth_cell, enforced[s]["mean_blocks"])
            static[s] = depth_cell(s, int(self.args.budget)) if int(self.args.budget) in depth_of else None

        def summary(records):
            records = [r for r in records if r]
            if not records:
                return None
            out = {"overall": mean_std([r["accuracy"]["overall"] for r in records]),
                   "toy_score": mean_std([r["toy_score"] for r in records])}  # fmt: skip
            if all("mean_blocks" in r for r in records):
                out["mean_blocks"] = mean_std([r["mean_blocks"] for r in records])
            return out

        table = {f"elastic-{d}": summary([depth_cell(s, d) for s in seeds]) for d in self.depths}
        table["routed"] = summary([routed[s] for s in seeds])
        table["routed_enforced"] = summary([enforced[s] for s in seeds])
        separate = [by_seed[s].get(f"separate-{int(self.args.budget)}|seed={s}") for s in seeds]
        if all(separate):
            table[f"separate-{int(self.args.budget)}"] = summary(separate)
        comparisons = {}
        for name, rec in (("routed", routed), ("routed_enforced", enforced)):
            if all(static[s] for s in seeds):
                comparisons[f"{name}_vs_elastic-{int(self.args.budget)}"] = _paired([static[s] for s in seeds],
                                                                                    [rec[s] for s in seeds])  # fmt: skip
            if all(separate):
                comparisons[f"{name}_vs_separate-{int(self.args.budget)}"] = _paired(separate, [rec[s] for s in seeds])
        if all(separate) and all(static[s] for s in seeds):  # the elastic depth against its separate student
            comparisons[f"elastic-{int(self.args.budget)}_vs_separate-{int(self.args.budget)}"] = _paired(
                separate, [static[s] for s in seeds]
            )
        largest, smallest = self.depths[0], self.depths[-1]
        comparisons[f"elastic-{largest}_vs_elastic-{smallest}"] = _paired(
            [depth_cell(s, smallest) for s in seeds], [depth_cell(s, largest) for s in seeds]
        )
        routers = {s: by_seed[s].get(f"router|seed={s}") for s in seeds}
        return {
            "model": "toy",
            "source_depth": self.source_depth,
            "depths": self.depths,
            "kept_layers": {str(d): self.kept[d] for d in self.depths},
            "budget": self.args.budget,
            "seeds": seeds,
            "settings": {k: v for k, v in vars(self.args).items() if k not in ("report_only", "work", "results")},
            "table": table,
            "shuffled": {
                "accuracy": mean_std([shuffled[s]["accuracy"] for s in seeds]),
                "p_shuffle_at_least_routed": [shuffled[s]["p_routed_at_or_below"] for s in seeds],
            },  # fmt: skip
            "oracle": {
                "accuracy": mean_std([oracle[s]["accuracy"] for s in seeds]),
                "mean_blocks": mean_std([oracle[s]["mean_blocks"] for s in seeds]),
            },  # fmt: skip
            "comparisons": comparisons,
            "routers": {
                str(s): {
                    "train_mean_blocks": r["train_mean_blocks"],
                    "heldout_mean_blocks": routed[s]["mean_blocks"],
                    "heldout_mean_blocks_enforced": enforced[s]["mean_blocks"],
                    "depth_penalty": r["depth_penalty"],
                    "train_shares": r["train_shares"],
                    "heldout_shares": [
                        r["heldout_codes"].count(k) / len(r["heldout_codes"]) for k in range(len(r["code_depths"]))
                    ],
                    "fit_cpu_seconds": r["fit_cpu_seconds"],
                }  # fmt: skip
                for s, r in routers.items()
            },
            "cpu_seconds": self._cpu_seconds(seeds),
            "machine": "2-core CPU shared with other jobs, 1 torch thread per process",
            "command": "python benchmarks/elastic_routing_toy.py " + " ".join(sys.argv[1:]),
        }

    def _oracle(self, s, depth_cell, budget: float) -> dict:
        """The assignment of depths to captions that gets the most captions right at a mean depth <= ``budget``,
        knowing every verdict (Lagrangian: each caption takes argmax correct - lam * depth; ties to the shallower)."""
        import torch

        from diffusers_layerprune.routing import budgeted_assignment

        cells = [depth_cell(s, d) for d in self.depths]
        scores = torch.tensor([[float(c["correct"][i]) - 1e-6 * d for c, d in zip(cells, self.depths, strict=True)]
                               for i in range(len(self.captions))])  # fmt: skip
        codes, _ = budgeted_assignment(scores, self.depths, budget)
        correct = [cells[c]["correct"][i] for i, c in enumerate(codes.tolist())]
        return {"accuracy": statistics.mean(correct), "mean_blocks": statistics.mean(self.depths[c] for c in codes)}

    def _cpu_seconds(self, seeds) -> dict:
        total = {"training": 0.0, "judging": 0.0, "router": 0.0}
        for s in seeds:
            cells = self.cells(s)
            for key, rec in cells.records.items():
                if key.startswith("router"):
                    total["router"] += rec["fit_cpu_seconds"]
                else:
                    total["judging"] += rec.get("cpu_seconds", 0.0)
            for cost in (self.work / f"seed-{s}").glob("*.cost.json"):
                total["training"] += json.loads(cost.read_text())["cpu_seconds"]
        return total


def print_report(rep: dict) -> None:
    print(f"\nall four right (%), mean ± std over seeds {rep['seeds']}:")
    for name, row in rep["table"].items():
        if row:
            blocks = f"  blocks {row['mean_blocks']['mean']:.2f}" if "mean_blocks" in row else ""
            print(f"  {name:<18} {100 * row['overall']['mean']:5.1f} ± {100 * row['overall']['std']:4.1f}  "
                  f"toy {row['toy_score']['mean']:.3f}{blocks}")  # fmt: skip
    print(f"  shuffled routing   {100 * rep['shuffled']['accuracy']['mean']:5.1f}")
    print(f"  oracle assignment  {100 * rep['oracle']['accuracy']['mean']:5.1f} "
          f"(blocks {rep['oracle']['mean_blocks']['mean']:.2f})")  # fmt: skip
    for name, c in rep["comparisons"].items():
        lo, hi = c["bootstrap_95"]
        print(f"  {name}: {100 * c['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    print(f"  CPU seconds: {rep['cpu_seconds']}")


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
