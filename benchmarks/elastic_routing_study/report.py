"""The report of benchmarks/elastic_routing_toy.py from the cells of every seed: the table, the routed model composed
from the depths' verdicts, the shuffled and oracle controls, the paired comparisons."""

from __future__ import annotations

import json
import random
import statistics
import sys

from elastic_study.claims import _paired  # the elastic study's paired comparison
from paper.cells import mean_std


class Report:
    """The report half of :class:`~elastic_routing_study.run.Bench` (it reads ``cells``, ``seeds``, ``depths``,
    ``args``, ``work``, ``kept``, ``captions`` and ``source_depth`` of the bench)."""

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
