"""Running the routing study's cells on the toy world: routed and fine-tuned models, the teacher, part 5's budget
checks, the throughput. Cells are appended to ``OUTPUT/cells.jsonl`` as they finish; a re-run skips finished cells."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from paper.cells import Cells  # the append-only cell store of every toy-world grid
from toybench import judged  # the toy judge's record, shared by the toy benchmarks


class Experiment:
    def __init__(self, args) -> None:
        import torch

        torch.set_num_threads(args.threads)
        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        self.args = args
        self.out = Path(args.output)
        self.cells = Cells(self.out / "cells.jsonl")
        self.pipe = load_pipeline("toy")
        self.pipe.set_progress_bar_config(disable=True)
        self.defaults = generation_defaults("toy", self.pipe)
        self.msl = self.defaults["max_sequence_length"]
        self.scorer = load_scorer("toy")
        self.train = world.captions("train")
        self.heldout = world.captions("heldout")
        self.embeds = encode_prompts(self.pipe, self.heldout, max_sequence_length=self.msl)
        self.negative = encode_prompts(self.pipe, [""], max_sequence_length=self.msl)
        self.original = {k: v.clone() for k, v in self.pipe.transformer.state_dict().items()}
        self._teacher_data = None

    def teacher_data(self):
        import torch

        from diffusers_layerprune.routing.train import RoutingSettings, teacher_latents

        if self._teacher_data is None:
            path = self.out / "teacher_data.pt"
            if path.is_file():
                self._teacher_data = tuple(torch.load(path, weights_only=True))
            else:
                self._teacher_data = teacher_latents(self.pipe, self.train, RoutingSettings(), self.defaults, print)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(list(self._teacher_data), path)
        return self._teacher_data

    def reset_weights(self) -> None:
        self.pipe.transformer.load_state_dict(self.original)

    # -- generation and judging ---------------------------------------------------------------------------------
    def generate(self, codes: list[int], skipped: dict[int, list[int]], seed: int, index=None):
        import torch

        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.modeling import generate_from_embeddings

        index = list(range(len(self.heldout))) if index is None else index
        seeds = [100000 + 1000 * seed + i for i in index]
        images = [None] * len(index)
        for k in sorted(set(codes)):
            rows = [j for j, c in enumerate(codes) if c == k]
            with skip_blocks(self.pipe.transformer, skipped[k]):
                out = generate_from_embeddings(
                    self.pipe,
                    self.embeds[0][[index[j] for j in rows]],
                    self.embeds[1][[index[j] for j in rows]],
                    self.negative,
                    seeds=[seeds[j] for j in rows],
                    num_inference_steps=self.defaults["num_inference_steps"],
                    guidance_scale=self.defaults["guidance_scale"],
                    resolution=self.defaults["resolution"],
                    max_sequence_length=self.msl,
                    batch_size=64,
                )
            for j, image in zip(rows, out, strict=True):
                images[j] = image
        return torch.stack(images)

    def judge(self, codes, skipped, seed: int) -> dict:
        start = time.perf_counter()
        images = self.generate(codes, skipped, seed)
        return {**judged(images, self.heldout, self.scorer, correct=True), "seconds": time.perf_counter() - start}

    def cell(self, key: str, compute) -> dict:
        record = self.cells.get(key)
        if record is None:
            record = self.cells.put(key, compute())
            if "accuracy" in record:
                print(
                    f"  {key}: all four {100 * record['accuracy']['overall']:.1f}%, toy score "
                    f"{record['toy_score']:.3f} ({record['seconds']:.0f} s)",
                    flush=True,
                )
        return record

    # -- routed models -------------------------------------------------------------------------------------------
    def fit(self, budget: int, k: int, seed: int, marginals: str = "uniform"):
        from diffusers_layerprune.routing import load_routing
        from diffusers_layerprune.routing.train import train_routed

        folder = self.out / "routers" / f"B{budget}-K{k}-s{seed}-{marginals}"
        if (folder / "routing.json").is_file():
            return load_routing(folder), None
        self.reset_weights()
        start = time.perf_counter()
        routed = train_routed(
            self.pipe, self.train, model_name="toy", teacher_data=self.teacher_data(), num_codes=k,
            budget=budget, steps=self.args.steps, marginals=marginals, seed=seed, log=lambda *a: None,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        folder.mkdir(parents=True, exist_ok=True)
        routed.routing.save(folder)
        return routed.routing, seconds

    def routed_cell(self, budget: int, k: int, seed: int, marginals: str = "uniform") -> dict:
        def compute():
            routing, fit_seconds = self.fit(budget, k, seed, marginals)
            self.reset_weights()
            return self.evaluate_routing(routing, seed, fit_seconds)

        return self.cell(f"routed|B={budget}|K={k}|seed={seed}|ot={marginals}", compute)

    def evaluate_routing(self, routing, seed: int, fit_seconds=None) -> dict:
        from diffusers_layerprune.routing import pooled_text_embedding

        record = routing.record
        codes = routing.route(pooled_text_embedding(*self.embeds)).tolist()
        skipped = {c: record.skipped_layers(c) for c in range(record.num_codes)}
        result = self.judge(codes, skipped, seed)
        depths = [len(record.codes[c].kept_layers) for c in codes]
        return {
            **result,
            "codes": codes,
            "code_blocks": [c.kept_layers for c in record.codes],
            "train_shares": [c.share for c in record.codes],
            "train_mean_blocks": record.mean_blocks,
            "heldout_mean_blocks": sum(depths) / len(depths),
            "closest": [c.closest_prompts for c in record.codes],
            "fit_seconds": fit_seconds,
        }

    def finetuned_cell(self, budget: int, k: int, seed: int) -> dict:
        def compute():
            import torch

            from diffusers_layerprune.routing.train import RoutingSettings, finetune_shared_weights

            routing, _ = self.fit(budget, k, seed)
            self.reset_weights()
            embeds, masks, latents = self.teacher_data()
            from diffusers_layerprune.routing import pooled_text_embedding

            data = {"embeds": embeds, "masks": masks, "latents": latents}
            assignment = routing.route(pooled_text_embedding(embeds, masks))
            kept = [c.kept_layers for c in routing.record.codes]
            settings = RoutingSettings(
                finetune_steps=self.args.finetune_steps, finetune_batch_size=16, finetune_learning_rate=2e-4, seed=seed
            )
            start = time.perf_counter()
            history = finetune_shared_weights(self.pipe, kept, assignment, data, settings, log=lambda *a: None)
            seconds = time.perf_counter() - start
            result = self.evaluate_routing(routing, seed)
            self.reset_weights()
            torch.set_grad_enabled(True)
            return {**result, "finetune_seconds": seconds, "final_loss": history[-1]["loss"]}

        return self.cell(f"finetuned|B={budget}|K={k}|seed={seed}|steps={self.args.finetune_steps}", compute)

    def teacher_cell(self, seed: int) -> dict:
        return self.cell(f"teacher|seed={seed}", lambda: self.judge([0] * len(self.heldout), {0: []}, seed))

    # -- budget on unseen prompts ------------------------------------------------------------------------------
    def budget_cell(self, name: str) -> dict:
        """Part 5 for the router saved in ``routers/NAME`` (``B{budget}-K{k}-s{seed}-{marginals}``)."""

        def compute():
            import random

            import torch

            from diffusers_layerprune.routing import load_routing, pooled_text_embedding

            routing = load_routing(self.out / "routers" / name)
            record = routing.record
            seed = int(name.split("-s")[1].split("-")[0])
            depths = [len(c.kept_layers) for c in record.codes]
            embeds, masks, _ = self.teacher_data()
            train = routing.route(pooled_text_embedding(embeds, masks)).tolist()
            pooled = pooled_text_embedding(*self.embeds)
            heldout = routing.route(pooled).tolist()
            whole = routing.route(pooled, enforce_budget=True).tolist()
            # serving batches: a fixed shuffle of the held-out captions cut into batches, each enforced on its own
            order = list(range(len(self.heldout)))
            random.Random(0).shuffle(order)
            size = self.args.serving_batch
            batches = [order[i : i + size] for i in range(0, len(order), size)]
            batched = [0] * len(order)
            over = []
            for rows in batches:
                over.append(statistics.fmean(depths[heldout[i]] for i in rows) > record.budget + 1e-9)
                for i, c in zip(rows, routing.route(pooled[rows], enforce_budget=True).tolist(), strict=True):
                    batched[i] = c
            skipped = {c: record.skipped_layers(c) for c in range(record.num_codes)}

            def summary(codes: list[int], judged: bool = False) -> dict:
                out = {
                    "mean_blocks": statistics.fmean(depths[c] for c in codes),
                    "shares": [codes.count(k) / len(codes) for k in range(record.num_codes)],
                }
                if judged:
                    out["changed"] = sum(a != b for a, b in zip(codes, heldout, strict=True))
                    if out["changed"]:
                        self.reset_weights()
                        with torch.no_grad():
                            r = self.judge(codes, skipped, seed)
                        out.update(accuracy=r["accuracy"]["overall"], toy_score=r["toy_score"])
                return out

            return {
                "router": name,
                "budget": record.budget,
                "blocks": depths,
                "record_mean_blocks": record.mean_blocks,
                "train": summary(train),
                "heldout": summary(heldout),
                "enforced_whole": summary(whole, judged=True),
                "enforced_batches": summary(batched, judged=True),
                "batch_size": size,
                "batches_over_budget": sum(over),
                "num_batches": len(batches),
                "max_batch_mean_blocks": max(statistics.fmean(depths[heldout[i]] for i in rows) for rows in batches),
            }

        return self.cell(f"budget|{name}|batch={self.args.serving_batch}", compute)

    def budget_cells(self) -> None:
        for folder in sorted((self.out / "routers").glob("B*-K*-s*-*")):
            if (folder / "routing.json").is_file():
                record = self.budget_cell(folder.name)
                print(
                    f"  {folder.name}: train {record['train']['mean_blocks']:.2f}, held-out "
                    f"{record['heldout']['mean_blocks']:.2f}, enforced {record['enforced_whole']['mean_blocks']:.2f}"
                    f" / per batch {record['enforced_batches']['mean_blocks']:.2f} blocks",
                    flush=True,
                )

    # -- throughput ---------------------------------------------------------------------------------------------
    def throughput_cell(self, static_drop: list[int]) -> dict:
        def compute():
            import random

            import torch

            from diffusers_layerprune.routing import pooled_text_embedding

            routing, _ = self.fit(9, 4, 0)
            self.reset_weights()
            index = random.Random(0).sample(range(len(self.heldout)), 64)
            pooled = pooled_text_embedding(self.embeds[0][index], self.embeds[1][index])
            codes = routing.route(pooled).tolist()
            skipped = {c: routing.record.skipped_layers(c) for c in range(routing.record.num_codes)}

            def grouped():
                return self.generate(codes, skipped, 0, index)

            def alone():
                return [self.generate([codes[j]], skipped, 0, [index[j]]) for j in range(64)]

            def static():
                return self.generate([0] * 64, {0: static_drop}, 0, index)

            def full():
                return self.generate([0] * 64, {0: []}, 0, index)

            runs = {"routed_grouped": grouped, "routed_per_prompt": alone, "static_9": static, "full_12": full}
            times = {name: [] for name in runs}
            with torch.no_grad():
                grouped()  # warm-up
                for _ in range(self.args.throughput_repeats):
                    for name, fn in runs.items():
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
            median = {name: statistics.median(v) for name, v in times.items()}
            depths = [len(routing.record.codes[c].kept_layers) for c in codes]
            return {
                "seconds": median,
                "all_seconds": times,
                "images_per_second": {name: 64 / s for name, s in median.items()},
                "groups": len(set(codes)),
                "mean_blocks": sum(depths) / len(depths),
                "load": os.getloadavg(),
                "threads": self.args.threads,
            }

        return self.cell(f"throughput|B=9|K=4|seed=0|repeats={self.args.throughput_repeats}", compute)
