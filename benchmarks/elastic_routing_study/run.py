"""The runs of benchmarks/elastic_routing_toy.py, per seed: the elastic model, the router over its depths, the
separately distilled static student; each judged on the held-out captions and kept as a cell."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

from elastic_study.toy import ToyTeacher, score_importance, timed_distil  # as elastic_toy.py does
from paper.cells import Cells

from .report import Report


class Bench(Report, ToyTeacher):
    """One seed's elastic model, router and controls, each judged on the held-out captions and kept as cells."""

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
