"""The elastic study's grid on the toy world: the importance file, the separate and elastic students (at most
``--max-trainings`` trainings per invocation), every judged cell kept in ``WORK/cells.jsonl``, and the report."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from paper.cells import Cells, mean_std

from .claims import _paired, _summary
from .toy import ToyTeacher, score_importance, timed_distil

# Elastic-training variants (--variant): extra train_distill arguments of the elastic run
VARIANTS = {
    "": ["--elastic_feature_kd", "all"],
    "featlargest": ["--elastic_feature_kd", "largest"],
    "normalized": ["--elastic_feature_kd", "largest", "--elastic_loss_balance", "normalized"],
    "normout": ["--elastic_feature_kd", "largest", "--elastic_loss_balance", "normalized_output"],
    "normalized-mw211": [
        *["--elastic_feature_kd", "largest", "--elastic_loss_balance", "normalized"],
        *["--elastic_middle_weights", "2,1,1"],
    ],
    "mw211": ["--elastic_feature_kd", "largest", "--elastic_middle_weights", "2,1,1"],
}


def elastic_step_draws(plan) -> dict[str, int]:
    """The elastic steps :meth:`Bench.step_costs` times, name -> step index (seed 0): with two depths every step trains
    both, ``{"elastic": 0}``; with three or more a step trains the largest, the smallest and one middle depth drawn at
    random (:meth:`ElasticPlan.depths_for_step`), so each middle depth ``m`` is timed on the first step that draws it,
    ``{"elastic-middle{m}": step}``."""
    middle = list(plan.depths[1:-1])
    if not middle:
        return {"elastic": 0}
    draws: dict[str, int] = {}
    step = 0
    while len(draws) < len(middle):
        m = plan.depths_for_step(0, step)[1]
        draws.setdefault(f"elastic-middle{m}", step)
        step += 1
    return {f"elastic-middle{m}": draws[f"elastic-middle{m}"] for m in middle}


def middle_weights(variant: str) -> list[float] | None:
    """The ``--elastic_middle_weights`` of an elastic-training variant (``None``: uniform)."""
    extra = VARIANTS[variant]
    if "--elastic_middle_weights" not in extra:
        return None
    return [float(w) for w in extra[extra.index("--elastic_middle_weights") + 1].split(",")]


def expected_elastic_seconds(medians: dict, depths, weights=None) -> float:
    """The expected CPU seconds of one elastic step from the timed steps (:func:`elastic_step_draws`): the two-depth
    step's, or the mean over the middle depths, weighted by the probability that a step draws each (``weights``:
    ``--elastic_middle_weights``; ``None``: uniform)."""
    middle = list(depths[1:-1])
    if not middle:
        return medians["elastic"]
    weights = weights or [1.0] * len(middle)
    return sum(w * medians[f"elastic-middle{m}"] for w, m in zip(weights, middle, strict=True)) / sum(weights)


class Bench(ToyTeacher):
    def __init__(self, args) -> None:
        self.args = args
        self.work = Path(args.work)
        self.importance_path = self.work / "importance_preference.json"
        self.seeds = [int(s) for s in args.seeds.split(",")]
        self.depths = [int(d) for d in args.depths.split(",")]
        self.budgets = [int(m) for m in args.elastic_steps.split(",")]
        self.cells = Cells(self.work / "cells.jsonl")
        self.trainings = 0
        self.pipe = None

    # -- setup ----------------------------------------------------------------------------------------------------
    def importance_file(self) -> Path:
        return score_importance(self.importance_path)

    def setup(self) -> None:
        if self.pipe is None:
            self.load_teacher(self.importance_path, self.args.eval_prompts, self.depths)

    def judge(self, pipe, dropped, seed: int) -> dict:
        from diffusers_layerprune.toy.judge import judge

        start = time.perf_counter()
        images = self.heldout_images(pipe, dropped, seed)
        report = judge(images, self.captions)
        return {
            "accuracy": {k: float(v) for k, v in report.accuracy.items()},
            "correct": [bool(x) for x in report.correct["overall"]],
            "toy_score": float(self.scorer(images, self.captions).mean()),
            "judge_seconds": time.perf_counter() - start,
        }

    def cell(self, key: str, compute) -> dict | None:
        record = self.cells.get(key)
        if record is None:
            result = compute()
            if result is None:
                return None
            record = self.cells.put(key, result)
            print(f"  {key}: all four {100 * record['accuracy']['overall']:.1f}%", flush=True)
        return record

    def train(self, student: Path, output: Path, steps: int, seed: int, extra=(), own_cache=False) -> dict | None:
        """Distil (unless finished); ``None`` when the --max-trainings budget of this invocation is spent.
        ``own_cache``: the run builds its text embeddings and teacher latents in a fresh cache folder (removed
        afterwards), so its cost includes that build, which otherwise the seed's first separate run pays and every
        later run of the seed reuses from the shared cache."""
        if (output / "model_index.json").is_file():
            cost = json.loads((output.parent / f"{output.name}.cost.json").read_text())
            return cost
        if self.args.max_trainings is not None and self.trainings >= self.args.max_trainings:
            return None
        self.trainings += 1
        cache = output.parent / f"{output.name}.cache"
        if own_cache:
            shutil.rmtree(cache, ignore_errors=True)
            extra = [*extra, "--cache_dir", str(cache)]
        cost = timed_distil(
            student,
            output,
            steps=steps,
            batch_size=self.args.batch_size,
            learning_rate=self.args.learning_rate,
            seed=seed,
            extra=extra,
        )
        if own_cache:
            shutil.rmtree(cache)
            cost["own_cache"] = True
        (output.parent / f"{output.name}.cost.json").write_text(json.dumps(cost))
        print(
            f"  trained {output.name}: {cost['cpu_seconds']:.0f} CPU-s, {cost['wall_seconds']:.0f} s wall", flush=True
        )
        return cost

    def tag(self, budget: int) -> str:
        return f"steps{budget}" + (f"-{self.args.variant}" if self.args.variant else "")

    # -- the grid -------------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """True when every cell is done."""
        from diffusers_layerprune.elastic import extract_depth
        from diffusers_layerprune.modeling import prune_pipeline, save_pruned_pipeline

        self.setup()
        imp = self.importance_file()
        complete = True
        for seed in self.seeds:
            folder = self.work / f"seed-{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            self.cell(f"teacher|seed={seed}", lambda seed=seed: self.judge(self.pipe, [], seed))
            for depth in self.depths:
                dropped = [i for i in range(self.source_depth) if i not in self.kept[depth]]
                self.cell(f"pruned-{depth}|seed={seed}", lambda d=dropped, seed=seed: self.judge(self.pipe, d, seed))
            pruned = {}
            for depth in self.depths:
                pruned[depth] = folder / f"pruned-{depth}"
                if not (pruned[depth] / "model_index.json").is_file():
                    save_pruned_pipeline(
                        prune_pipeline(self.pipe, kept_layers=self.kept[depth]), pruned[depth], overwrite=True
                    )
            for depth in self.depths:
                key = f"separate-{depth}[steps{self.args.steps}]|seed={seed}"
                out = folder / f"separate-{depth}-steps{self.args.steps}"

                def separate(depth=depth, out=out, seed=seed, pruned=pruned):
                    cost = self.train(pruned[depth], out, self.args.steps, seed)
                    if cost is None:
                        return None
                    result = self.judge(self._load(out), [], seed)
                    return {**result, "train": cost}

                complete &= self.cell(key, separate) is not None
            for budget in self.budgets:
                tag = self.tag(budget)
                out = folder / f"elastic-{'-'.join(map(str, self.depths))}-{tag}"
                keys = {d: f"elastic-{d}[{tag}]|seed={seed}" for d in self.depths}
                if all(self.cells.get(k) for k in keys.values()):
                    continue
                extra = ["--elastic_depths", ",".join(map(str, self.depths)), "--importance", imp]
                extra += VARIANTS[self.args.variant]
                cost = self.train(
                    pruned[self.depths[0]], out, budget, seed, extra, own_cache=self.args.elastic_own_cache
                )
                if cost is None:
                    complete = False
                    continue
                for depth in self.depths:
                    extracted = folder / f"{out.name}-d{depth}"
                    if not (extracted / "model_index.json").is_file():
                        extract_depth(out, depth, extracted, overwrite=True)
                    self.cell(keys[depth], lambda e=extracted, seed=seed, c=cost: {
                        **self.judge(self._load(e), [], seed), "train": c})  # fmt: skip
                    load_check = json.loads((extracted / "distill_config.json").read_text())["kept_layers"]
                    assert load_check == self.kept[depth], (load_check, self.kept[depth])
        return complete

    # -- step cost ------------------------------------------------------------------------------------------------
    def step_costs(self, repeats: int = 8) -> dict:
        """CPU seconds of one optimisation step (forward, backward, AdamW update) of each separate student and of the
        elastic student (one teacher pass, then the depths the step trains: with three or more depths, one step per
        middle depth, and ``elastic`` is their mean, see :func:`elastic_step_draws`), measured interleaved in this one
        process on the same batch
        of ``--batch-size`` toy captions: a ratio that the other jobs on the machine cannot bias towards either."""
        import torch

        from diffusers_layerprune.distill import KDWeights, block_pairs, kd_step_losses
        from diffusers_layerprune.elastic import ElasticPlan, elastic_step_losses
        from diffusers_layerprune.families import encode_text, family_of
        from diffusers_layerprune.modeling import prune_pipeline
        from diffusers_layerprune.toy import world

        cached = self.work / "step_costs.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        teacher = self.pipe.transformer.eval().requires_grad_(False)
        family = family_of(teacher)
        b = self.args.batch_size
        text = encode_text(
            self.pipe, world.captions("train")[:b], max_sequence_length=self.defaults["max_sequence_length"]
        )
        g = torch.Generator().manual_seed(0)
        size = self.defaults["resolution"] // self.pipe.vae_scale_factor
        latents = torch.randn(b, 4, size, size, generator=g)
        noise, timesteps = torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (b,), generator=g)
        weights = KDWeights()

        def cond(model, x):
            return family.forward(model, x, timesteps, text)

        students = {d: prune_pipeline(self.pipe, kept_layers=self.kept[d]).transformer.train().requires_grad_(True)
                    for d in self.depths}  # fmt: skip
        plan = ElasticPlan(
            tuple(self.depths), {d: tuple(self.kept[d]) for d in self.depths}, tuple(self.kept[self.depths[0]])
        )
        elastic = (
            prune_pipeline(self.pipe, kept_layers=self.kept[self.depths[0]]).transformer.train().requires_grad_(True)
        )
        runs = {f"separate-{d}": (s, lambda s=s: kd_step_losses(s, teacher, latents + noise, cond, noise, block_pairs(s, teacher), weights))
                for d, s in students.items()}  # fmt: skip
        for name, at in elastic_step_draws(plan).items():  # one elastic model: the timed steps differ in their depths
            runs[name] = (elastic, lambda at=at: elastic_step_losses(
                elastic, teacher, latents + noise, cond, noise, block_pairs(elastic, teacher), weights, plan, seed=0,
                step=at))  # fmt: skip
        optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-6) for name, (model, _) in runs.items()}
        seconds = {name: [] for name in runs}
        for repeat in range(repeats + 1):  # the first round warms up
            for name, (_model, step) in runs.items():
                start = time.process_time()
                step()["loss"].backward()
                optimizers[name].step()
                optimizers[name].zero_grad(set_to_none=True)
                if repeat:
                    seconds[name].append(time.process_time() - start)
        medians = {name: statistics.median(v) for name, v in seconds.items()}
        medians["elastic"] = expected_elastic_seconds(medians, self.depths)
        separate = sum(medians[f"separate-{d}"] for d in self.depths)
        result = {
            "cpu_seconds_per_step": medians,
            "repeats": repeats,
            "batch_size": b,
            "elastic_over_separate_per_step": medians["elastic"] / separate,
        }
        cached.write_text(json.dumps(result, indent=1))
        return result

    # -- report ---------------------------------------------------------------------------------------------------
    def report(self) -> dict:
        def get(name, seed):
            return self.cells.get(f"{name}|seed={seed}")

        seeds = [s for s in self.seeds if get("teacher", s)]
        table = {"teacher": _summary([get("teacher", s) for s in seeds])}
        comparisons = []
        for depth in self.depths:
            table[f"pruned-{depth}"] = _summary([get(f"pruned-{depth}", s) for s in seeds])
            separate = [get(f"separate-{depth}[steps{self.args.steps}]", s) for s in seeds]
            table[f"separate-{depth}"] = _summary(separate)
            for budget in self.budgets:
                elastic = [get(f"elastic-{depth}[{self.tag(budget)}]", s) for s in seeds]
                table[f"elastic-{depth}[{self.tag(budget)}]"] = _summary(elastic)
                both = [(s, e, seed) for s, e, seed in zip(separate, elastic, seeds, strict=True) if s and e]
                if both:  # the seeds where both were judged
                    comparisons.append(
                        {
                            "depth": depth,
                            "elastic_steps": budget,
                            "variant": self.args.variant,
                            "separate_steps": self.args.steps,
                            "seeds": [seed for _, _, seed in both],
                            **_paired([s for s, _, _ in both], [e for _, e, _ in both]),
                        }  # fmt: skip
                    )
        costs = {}
        for budget in self.budgets:
            ratios_cpu, ratios_wall = [], []
            for s in seeds:
                sep = [get(f"separate-{d}[steps{self.args.steps}]", s) for d in self.depths]
                el = get(f"elastic-{self.depths[0]}[{self.tag(budget)}]", s)
                if all(sep) and el:
                    ratios_cpu.append(el["train"]["cpu_seconds"] / sum(r["train"]["cpu_seconds"] for r in sep))
                    ratios_wall.append(el["train"]["wall_seconds"] / sum(r["train"]["wall_seconds"] for r in sep))
            if ratios_cpu:
                costs[str(budget)] = {"cpu_ratio": mean_std(ratios_cpu), "wall_ratio": mean_std(ratios_wall)}
        steps = self.step_costs()
        weights = middle_weights(self.args.variant)
        if weights is not None:  # this variant draws the middle depths with other probabilities than the timed mean
            medians = steps["cpu_seconds_per_step"]
            elastic = expected_elastic_seconds(medians, self.depths, weights)
            separate = sum(medians[f"separate-{d}"] for d in self.depths)
            steps = {**steps, "elastic_middle_weights": weights, "elastic_over_separate_per_step": elastic / separate}
        for budget in self.budgets:  # the training loop's cost alone: steps x the cost of one step
            costs.setdefault(str(budget), {})["loop_ratio"] = (
                budget * steps["elastic_over_separate_per_step"] / (self.args.steps * 1.0)
            )
        goal = {}
        for budget in self.budgets:
            rows = [c for c in comparisons if c["elastic_steps"] == budget]
            cost = costs.get(str(budget), {}).get("loop_ratio")
            if any(c["seeds"] != seeds for c in rows):  # judged on fewer seeds: no verdict
                goal[str(budget)] = {"cost_ratio": cost, "seeds": rows[0]["seeds"], "reached": None}
            elif rows and cost is not None:
                goal[str(budget)] = {
                    "cost_ratio": cost,
                    "every_depth_within_noise": all(c["within_noise"] for c in rows),
                    "at_most_one_third": cost <= 1 / 3,
                    "reached": all(c["within_noise"] for c in rows) and cost <= 1 / 3,
                }
        return {
            "model": "toy",
            "source_depth": self.source_depth,
            "depths": self.depths,
            "kept_layers": {str(d): self.kept[d] for d in self.depths},
            "importance": {"criterion": self.importance.criterion, "ranking": self.importance.ranking()},
            "settings": {  # --elastic-own-cache only where set (the reports written before it stay as they were)
                k: v
                for k, v in vars(self.args).items()
                if k not in ("report_only", "max_trainings", "work", "results") and (k != "elastic_own_cache" or v)
            },
            "seeds": seeds,
            "table": table,
            "comparisons": comparisons,
            "cost": costs,
            "step_costs": steps,
            "goal": goal,
            "machine": "2-core CPU shared with other jobs",
            "command": "python benchmarks/elastic_toy.py " + " ".join(sys.argv[1:]),
        }
