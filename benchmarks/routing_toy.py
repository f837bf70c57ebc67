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
import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP waits stall badly on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from reproduce_paper import Cells  # noqa: E402  (the same append-only cell store)
from toybench import METRICS, judged  # noqa: E402  (the toy judge's record, shared by the toy benchmarks)

RESULT = ROOT / "benchmarks" / "results" / "routing_toy.json"
STATIC = ROOT / "benchmarks" / "results" / "reproduce_paper.json"
DOC, PLOT = ROOT / "docs" / "routing.md", ROOT / "docs" / "routing.png"
BUDGETS = {9: "0.25", 7: "0.40"}  # mean blocks run -> reproduce_paper's ratio of the static model of that depth
ATTRIBUTES = ("colour", "shape", "size", "position")


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


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------------------------------
# The experiment


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


# ---------------------------------------------------------------------------------------------------------------
# Aggregation (pure functions of the cells)


def mean_std(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
    }


def nmi(codes: list[int], labels: list[str]) -> float:
    """Mutual information of code and label over the code's entropy (0: the label says nothing about the code)."""
    n = len(codes)
    pc, pl, joint = Counter(codes), Counter(labels), Counter(zip(codes, labels, strict=True))
    mi = sum(c / n * math.log((c / n) / (pc[a] / n * pl[b] / n)) for (a, b), c in joint.items())
    h = -sum(c / n * math.log(c / n) for c in pc.values())
    return mi / h if h > 0 else 0.0


def code_analysis(cell: dict, heldout: list[str], teacher_correct: list[bool] | None) -> dict:
    from diffusers_layerprune.toy.world import parse_caption

    attrs = [parse_caption(c).to_dict() for c in heldout]
    codes = cell["codes"]
    depth = [len(cell["code_blocks"][c]) for c in codes]
    per_code = []
    for k, blocks in enumerate(cell["code_blocks"]):
        rows = [i for i, c in enumerate(codes) if c == k]
        top = {}
        for a in ATTRIBUTES:
            counts = Counter(str(attrs[i][a]) for i in rows)
            if counts:
                value, count = counts.most_common(1)[0]
                top[a] = f"{value} ({count / len(rows):.0%})"
        per_code.append({"blocks": len(blocks), "skipped": [i for i in range(12) if i not in blocks],
                         "heldout_share": len(rows) / len(codes), "train_share": cell["train_shares"][k],
                         "top": top, "closest": cell["closest"][k]})  # fmt: skip
    result = {
        "per_code": per_code,
        "nmi": {a: nmi(codes, [str(x[a]) for x in attrs]) for a in ATTRIBUTES},
    }
    if teacher_correct is not None:
        right = [d for d, ok in zip(depth, teacher_correct, strict=True) if ok]
        wrong = [d for d, ok in zip(depth, teacher_correct, strict=True) if not ok]
        result["depth_teacher_right"] = statistics.fmean(right) if right else None
        result["depth_teacher_wrong"] = statistics.fmean(wrong) if wrong else None
    return result


def balance(cell: dict) -> dict:
    k = len(cell["code_blocks"])
    counts = Counter(cell["codes"])
    shares = [counts.get(c, 0) / len(cell["codes"]) for c in range(k)]
    entropy = -sum(s * math.log(s) for s in shares if s > 0)
    return {"shares": shares, "normalised_entropy": abs(entropy / math.log(k)) if k > 1 else 1.0,
            "codes_used": sum(1 for s in shares if s > 0)}  # fmt: skip


def static_rows(static: dict, ratio: str) -> dict:
    """The static baselines of reproduce_paper.json at one ratio: preference's choice and the best other criterion,
    before and after its 400-step distillation."""
    table = static["table"]
    pruned = table["pruned"][ratio]
    others = {c: v for c, v in pruned.items() if c != "preference" and "(span)" not in c}
    best_other = max(others, key=lambda c: others[c]["overall"]["mean"])
    distilled = table["distilled"][ratio]
    best_distilled_other = max(
        (c for c in distilled if c != "preference"), key=lambda c: distilled[c]["overall"]["mean"]
    )
    return {
        "pruned": {"preference": pruned["preference"], best_other: pruned[best_other]},
        "distilled": {"preference": distilled["preference"], best_distilled_other: distilled[best_distilled_other]},
        "best_other": best_other,
        "best_distilled_other": best_distilled_other,
        "plans": {c: static["plans"][c][ratio] for c in ("preference", best_other)},
        "per_seed": {
            stage: {
                c: {s: r["accuracy"]["overall"] for s, r in static["per_seed"][stage][ratio][c].items()}
                for c in static["per_seed"][stage][ratio]
            }  # fmt: skip
            for stage in ("pruned", "distilled")
        },
        "per_seed_toy_score": {
            stage: {
                c: {s: r["toy_score"] for s, r in static["per_seed"][stage][ratio][c].items()}
                for c in static["per_seed"][stage][ratio]
            }  # fmt: skip
            for stage in ("pruned", "distilled")
        },
    }


def aggregate(cells: list[dict], static: dict, heldout: list[str], args) -> dict:
    by_key = {c["key"]: c for c in cells}
    result = {"budgets": {}, "balance": {}, "throughput": None, "teacher": {}}
    teacher = {int(c["key"].split("seed=")[1]): c for c in cells if c["key"].startswith("teacher|")}
    result["teacher"] = {
        "overall": mean_std([c["accuracy"]["overall"] for c in teacher.values()]),
        "toy_score": mean_std([c["toy_score"] for c in teacher.values()]),
        "reproduce_paper": static["teacher"],
    }
    for budget in _ints(args.budgets):
        ratio = BUDGETS[budget]
        entry = {"static": static_rows(static, ratio), "routed": {}, "finetuned": {}, "codes": {}}
        for k in _ints(args.num_codes):
            for stage, prefix in (("routed", "routed"), ("finetuned", "finetuned")):
                rows = [c for c in cells if c["key"].startswith(f"{prefix}|B={budget}|K={k}|")
                        and ("ot=uniform" in c["key"] or prefix == "finetuned")]  # fmt: skip
                if not rows:
                    continue
                entry[stage][str(k)] = {
                    **{m: mean_std([c["accuracy"][m] for c in rows]) for m in METRICS},
                    "toy_score": mean_std([c["toy_score"] for c in rows]),
                    "heldout_mean_blocks": mean_std([c["heldout_mean_blocks"] for c in rows]),
                    "train_mean_blocks": mean_std([c["train_mean_blocks"] for c in rows]),
                    "seeds": sorted(int(c["key"].split("seed=")[1].split("|")[0]) for c in rows),
                }
            first = by_key.get(f"routed|B={budget}|K={k}|seed=0|ot=uniform")
            if first:
                t0 = teacher.get(0)
                entry["codes"][str(k)] = code_analysis(first, heldout, t0["correct"] if t0 else None)
        result["budgets"][str(budget)] = entry
    for ot in ("uniform", "budget", "none"):
        c = by_key.get(f"routed|B=9|K=4|seed=0|ot={ot}")
        if c:
            result["balance"][ot] = {**balance(c), "overall": c["accuracy"]["overall"], "toy_score": c["toy_score"],
                                     "heldout_mean_blocks": c["heldout_mean_blocks"],
                                     "train_shares": c["train_shares"], "blocks": [len(b) for b in c["code_blocks"]]}  # fmt: skip
    tp = [c for c in cells if c["key"].startswith("throughput|")]
    result["throughput"] = tp[-1] if tp else None
    result["budget_check"] = budget_rows(cells, by_key)
    return result


def budget_rows(cells: list[dict], by_key: dict) -> list[dict]:
    """Part 5's cells in router order (budget, K, seed, marginals), each with the accuracy of its plain routing
    (the routed cell of the same router) beside the enforced ones."""

    def order(c):
        b, k, s, ot = c["router"].split("-")
        return (-int(b[1:]), int(k[1:]), ot != "uniform", ot, int(s[1:]))

    rows = []
    for c in sorted((c for c in cells if c["key"].startswith("budget|")), key=order):
        b, k, s, ot = c["router"].split("-")
        plain = by_key.get(f"routed|B={b[1:]}|K={k[1:]}|seed={s[1:]}|ot={ot}")
        rows.append({**{x: v for x, v in c.items() if x != "key"},
                     "plain_accuracy": plain["accuracy"]["overall"] if plain else None,
                     "plain_toy_score": plain["toy_score"] if plain else None})  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report


def _pct(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    s = f"{100 * stat['mean']:.1f}%"
    return s + (f" ± {100 * stat['std']:.1f}" if stat.get("n", 1) > 1 else "")


def _score(stat: dict | None) -> str:
    return "-" if not stat or stat.get("mean") is None else f"{stat['mean']:.3f}"


def verdicts(result: dict) -> list[str]:
    """Best routed K against the best static model, on the same seeds (the static numbers are per seed in
    reproduce_paper.json, so a routed row of seed 0 only is compared with the static models' seed-0 images)."""
    lines = []
    for budget, entry in result["budgets"].items():
        per_seed = entry["static"]["per_seed"]
        for stage, static_stage, label in (("routed", "pruned", "before"), ("finetuned", "distilled", "after")):
            if not entry[stage]:
                continue
            best_k = max(entry[stage], key=lambda k: entry[stage][k]["overall"]["mean"])
            row = entry[stage][best_k]
            seeds = [str(x) for x in row["seeds"]]
            static_means = {
                c: statistics.fmean(v[x] for x in seeds)
                for c, v in per_seed[static_stage].items()
                if all(x in v for x in seeds) and "(span)" not in c
            }
            ref_name = max(static_means, key=static_means.get)
            ref, best = static_means[ref_name], row["overall"]["mean"]
            word = "beats" if best > ref + 1 / 216 else ("ties with" if abs(best - ref) <= 1 / 216 else "loses to")
            extra = ""
            toy = entry["static"].get("per_seed_toy_score", {}).get(static_stage, {}).get(ref_name)
            if toy and "toy_score" in row and "heldout_mean_blocks" in row:
                static_toy = statistics.fmean(toy[x] for x in seeds)
                extra = (
                    f"; toy score {row['toy_score']['mean']:.3f} vs {static_toy:.3f}; the routed model ran "
                    f"{row['heldout_mean_blocks']['mean']:.2f} blocks per held-out caption"
                )
            lines.append(
                f"mean {budget} of 12 blocks, {label} distillation (seed{'s' if len(seeds) > 1 else ''} "
                f"{', '.join(seeds)}): the best routed model (K = {best_k}, {100 * best:.1f}% all four right) "
                f"**{word}** the best static model ({ref_name}, {100 * ref:.1f}%){extra}"
            )
    return lines


def overall_verdict(lines: list[str]) -> str:
    """One sentence over the comparisons, by stage, with what qualifies the wins (toy score, held-out depth)."""
    import re

    def tally(stage: str) -> tuple[int, int]:
        rows = [v for v in lines if f"{stage} distillation" in v]
        return sum("**beats**" in v for v in rows), len(rows)

    caveats = set()
    for v in lines:
        if "**beats**" not in v:
            continue
        m = re.search(r"toy score ([0-9.]+) vs ([0-9.]+)", v)
        if m and float(m[1]) < float(m[2]):
            caveats.add("a lower toy score than the static model")
        m = re.search(r"mean (\d+) of 12 blocks.*ran ([0-9.]+) blocks per held-out caption", v)
        if m and float(m[2]) > float(m[1]):
            caveats.add(
                f"at {m[1]} blocks, {float(m[2]) - float(m[1]):.2f} blocks more than the budget per held-out caption"
            )
    (bw, bn), (aw, an) = tally("before"), tally("after")
    wins = bw + aw
    if wins == len(lines) and lines:
        head = "**Routing beats static pruning on the toy world** in every comparison below"
    elif not wins:
        head = "**Routing does not beat static pruning on the toy world**: it wins none of the comparisons below"
    else:
        head = (
            f"**Routing does not beat static pruning overall here**: it wins {bw} of {bn} comparisons before "
            f"distillation and {aw} of {an} after the same distillation budget"
        )
    if caveats:
        head += f"; its wins come with {'; and, '.join(sorted(caveats, key=lambda c: not c.startswith('a lower')))}"
    return head + "."


def write_plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = list(result["budgets"])
    fig, axes = plt.subplots(1, len(budgets), figsize=(5.5 * len(budgets), 4), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        entry = result["budgets"][budget]
        labels, before, after = [], [], []
        for name, v in entry["static"]["pruned"].items():
            labels.append(f"static\n{name}")
            before.append(v["overall"]["mean"])
            after.append(entry["static"]["distilled"].get(name, {}).get("overall", {}).get("mean", float("nan")))
        for name, v in entry["static"]["distilled"].items():
            if name not in entry["static"]["pruned"]:
                labels.append(f"static\n{name}")
                before.append(float("nan"))
                after.append(v["overall"]["mean"])
        for k in sorted(entry["routed"], key=int):
            labels.append(f"routed\nK={k}")
            before.append(entry["routed"][k]["overall"]["mean"])
            after.append(entry["finetuned"].get(k, {}).get("overall", {}).get("mean", float("nan")))
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], [100 * v for v in before], 0.4, label="before distillation")
        ax.bar([i + 0.2 for i in x], [100 * v for v in after], 0.4, label="after 400 steps")
        ax.axhline(100 * result["teacher"]["reproduce_paper"]["overall"]["mean"], color="k", ls="--", lw=1,
                   label="full model (12 blocks)")  # fmt: skip
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_title(f"mean {budget} of 12 blocks run (static: 3 seeds; routed: seeds in docs/routing.md)", fontsize=9)
        ax.set_ylabel("held-out images with all four attributes right (%)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_page(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Prompt-routed depth on the toy world",
        "",
        "<!-- generated by benchmarks/routing_toy.py from benchmarks/results/routing_toy.json; do not edit -->",
        "",
        "A **router** sends each prompt to one of K **codes** (sets of blocks to run, sharing the model's weights), so "
        "that the mean number of blocks run meets a budget; prompts sharing a code are generated as one batch. The "
        "method follows APTP (Ganjdanesh et al., *Not All Prompts Are Made Equal: Prompt-based Pruning of "
        "Text-to-Image Diffusion Models*, 2024), which routes prompts to channel-pruned sub-networks of Stable "
        "Diffusion 2.1 with a contrastive objective balanced by optimal transport (Sinkhorn; Cuturi, 2013); here a "
        "code is a set of DiT blocks to skip, relaxed during training with a straight-through Gumbel-sigmoid (as "
        "in TinyFusion's learnable depth masks, Fang et al., 2024). How to use it: the README and "
        "`layerprune route --help`.",
        "",
        "## Verdict",
        "",
        overall_verdict(verdicts(result)),
        "",
        *[f"- {v}" for v in verdicts(result)],
        "",
        "Rule: a model beats another when it gets at least one more of the 216 held-out images fully right (mean "
        "over the seeds each row has); within one image it is a tie.",
        "",
        "Possible reasons when routing loses (not tested here): the codes are chosen by a distillation loss on noisy "
        "latents with the weights frozen, a signal close to the output-loss criterion, which on this toy keeps less "
        "quality than the preference criterion (docs/results.md); fine-tuning must make one set of weights serve "
        "K depths at once, while a static model's distillation specialises its weights to one depth; and the toy "
        "captions (one shape, one template) differ little in how much depth they need, which leaves a router "
        "little to exploit.",
        "",
        *elastic_section(),
        "## Setup",
        "",
        f"- Routed: `train_routed` on the 360 training captions, {s['steps']} steps, batch 16, uniform Sinkhorn "
        "marginals, weights frozen; then, for the seeds in the 'after' column, the shared weights fine-tuned with "
        f"hard routing for {s['finetune_steps']} steps (batch 16, learning rate 2e-4, AdamW, train_distill's losses: "
        "task + output + variance + feature KD on every block a code runs, teacher = the full model).",
        "- Static: the numbers of `benchmarks/results/reproduce_paper.json` for the same depth (3 and 5 of 12 blocks "
        "removed): the preference criterion's choice and the best other criterion, before and after the same "
        "400-step distillation (train_distill; there only preference, block_influence and random were distilled).",
        "- Judged on the 216 held-out captions (never seen by the router, the codes or any distillation), 20 DPM-Solver++"
        " steps, guidance 4.5, image i of seed s from noise seed 100000 + 1000 s + i for every model, so rows "
        "compare image for image. The full model judged here: "
        f"{_pct(result['teacher']['overall'])} all four right on seed 0 (reproduce_paper.json, seed 0: "
        f"{100 * result['teacher']['reproduce_paper']['overall']['values'][0]:.1f}%), the check that both use the "
        "same protocol.",
        "- The routed fine-tuning runs in this process (`finetune_shared_weights`, what `layerprune route "
        "--finetune-steps` and `accelerate launch -m diffusers_layerprune.routing.finetune` run) with "
        "train_distill's losses, optimiser and hyperparameters, on the full model's generations of the training "
        "captions; its draws of noise and timesteps are its own, not train_distill's.",
        f"- Seeds run: routed {s['seeds']}, fine-tuned {s['finetune_seeds']} (the grid was reduced to fit the time "
        "on a shared 2-core CPU; the 'n' of each cell says how many seeds it holds). Machine: "
        f"{s['machine']}; {s['minutes']:.0f} min of cells.",
        "",
        "![accuracy](routing.png)",
        "",
    ]
    for budget, entry in result["budgets"].items():
        st = entry["static"]
        lines += [
            f"## Mean {budget} of 12 blocks",
            "",
            "| model | blocks run (held-out mean) | all four | colour | position | shape | size | toy score | all four, "
            "after distillation | toy score, after |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, v in st["pruned"].items():
            d = st["distilled"].get(name)
            plans = st["plans"].get(name, {})
            lines.append(
                f"| static, {name} (removes {', '.join(str(p) for p in plans.values())} per seed) | {budget} | "
                + " | ".join(_pct(v[m]) for m in METRICS)
                + f" | {_score(v['toy_score'])} | {_pct(d['overall']) if d else 'not distilled'} | "
                f"{_score(d['toy_score']) if d else '-'} |"
            )
        for name, d in st["distilled"].items():
            if name not in st["pruned"]:
                lines.append(
                    f"| static, {name} (distilled only) | {budget} | - | - | - | - | - | - | {_pct(d['overall'])} | "
                    f"{_score(d['toy_score'])} |"
                )
        for k in sorted(entry["routed"], key=int):
            v, f = entry["routed"][k], entry["finetuned"].get(k)
            lines.append(
                f"| routed, K = {k} (n = {v['overall']['n']}) | {v['heldout_mean_blocks']['mean']:.2f} | "
                + " | ".join(_pct(v[m]) for m in METRICS)
                + f" | {_score(v['toy_score'])} | {_pct(f['overall']) + ' (n = ' + str(f['overall']['n']) + ')' if f else '-'}"
                f" | {_score(f['toy_score']) if f else '-'} |"
            )
        lines += [
            "",
            "The budget is met on the training prompts by construction (`mean_blocks <= budget`); on the held-out "
            "captions the mean can differ a little, as the column shows (see 'Budget on unseen prompts' below).",
            "",
        ]
        if entry["codes"]:
            lines += ["### What the codes learned (seed 0)", ""]
            for k, an in sorted(entry["codes"].items(), key=lambda kv: int(kv[0])):
                nmi_text = ", ".join(f"{a} {v:.2f}" for a, v in sorted(an["nmi"].items(), key=lambda kv: -kv[1]))
                lines.append(f"**K = {k}.** Normalised mutual information of code and caption attribute: {nmi_text}.")
                if an.get("depth_teacher_wrong") is not None:
                    lines.append(
                        f" Captions the full model gets wrong go to codes of {an['depth_teacher_wrong']:.2f} blocks on "
                        f"average, those it gets right to {an['depth_teacher_right']:.2f}."
                    )
                lines += ["", "| code | blocks | skipped | share (train / held-out) | most common value per attribute | "
                          "closest training prompts |", "|---|---|---|---|---|---|"]  # fmt: skip
                for i, c in enumerate(an["per_code"]):
                    top = ", ".join(f"{a}: {v}" for a, v in c["top"].items()) or "-"
                    lines.append(
                        f"| {i} | {c['blocks']} | {c['skipped']} | {c['train_share']:.0%} / {c['heldout_share']:.0%} | "
                        f"{top} | {'; '.join(c['closest'][:2])} |"
                    )
                lines.append("")
    if result["balance"]:
        lines += [
            "## Balance with and without optimal transport (K = 4, mean 9 blocks, seed 0)",
            "",
            "| contrastive target | codes used | shares (held-out) | normalised entropy | blocks per code | all four |",
            "|---|---|---|---|---|---|",
        ]
        names = {"uniform": "Sinkhorn, uniform marginals", "budget": "Sinkhorn, budget-weighted marginals",
                 "none": "router's own argmax (no OT)"}  # fmt: skip
        for ot, b in result["balance"].items():
            lines.append(
                f"| {names[ot]} | {b['codes_used']} of 4 | {', '.join(f'{x:.0%}' for x in b['shares'])} | "
                f"{b['normalised_entropy']:.2f} | {b['blocks']} | {100 * b['overall']:.1f}% |"
            )
        lines.append("")
    tp = result["throughput"]
    if tp:
        sec = tp["seconds"]
        lines += [
            "## Throughput: a mixed batch of 64 held-out captions (K = 4, mean 9 blocks)",
            "",
            f"Median of {len(tp['all_seconds']['routed_grouped'])} interleaved repeats in one run, {tp['threads']} "
            f"torch thread(s), 20 steps with guidance; the routed batch ran as {tp['groups']} groups, "
            f"{tp['mean_blocks']:.2f} blocks per caption on average. Load average during the run: "
            f"{', '.join(f'{x:.1f}' for x in tp['load'])} (other jobs shared the 2 cores).",
            "",
            "| run | seconds | images / s | speed relative to routed, grouped |",
            "|---|---|---|---|",
        ]
        names = {"routed_grouped": "routed, grouped by code", "routed_per_prompt": "routed, each caption alone",
                 "static_9": "static 9 blocks (preference, seed 0), one batch", "full_12": "full 12 blocks, one batch"}  # fmt: skip
        for name, label in names.items():
            lines.append(
                f"| {label} | {sec[name]:.2f} | {64 / sec[name]:.1f} | {sec['routed_grouped'] / sec[name]:.2f}x |"
            )
        lines.append("")
    lines += budget_section(result.get("budget_check") or [])
    lines += [
        "## Reproduce",
        "",
        "```bash",
        f"python benchmarks/routing_toy.py {s['command_args']}".rstrip(),
        "python benchmarks/routing_toy.py --report-only   # this page and the plot from the JSON",
        "python benchmarks/routing_toy.py --budget-check  # only 'Budget on unseen prompts', for the routers fitted",
        *(
            [
                "python benchmarks/elastic_routing_toy.py --seeds 0 --separate   # each seed: see its docstring",
                "python benchmarks/elastic_routing_toy.py --report-only",
            ]
            if ELASTIC_RESULT.is_file()
            else []
        ),  # fmt: skip
        "```",
        "",
    ]
    return "\n".join(lines)


ELASTIC_RESULT = ROOT / "benchmarks" / "results" / "elastic_routing_toy.json"


def _judged_difference(c: dict, other: str) -> str:
    """``beats OTHER (+x points, 95% CI [lo, hi])``: beats / loses to when the interval excludes 0."""
    lo, hi = c["bootstrap_95"]
    word = "beats" if lo > 0 else "loses to" if hi < 0 else "is within noise of"
    seeds = c["per_seed_difference"]
    below, (t_lo, t_hi) = sum(d < 0 for d in seeds), c["seed_t_95"]
    return (
        f"{word} {other} ({100 * c['difference']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}] by a "
        f"paired bootstrap over captions; lower on {below} of {len(seeds)} seeds, t interval over seeds "
        f"[{100 * t_lo:+.1f}, {100 * t_hi:+.1f}])"
    )


def elastic_section(path: Path = ELASTIC_RESULT) -> list[str]:
    """The page's section on routing over an elastic model's depths (benchmarks/elastic_routing_toy.py's JSON);
    nothing when that benchmark has not been run."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    t, c, depths = r["table"], r["comparisons"], r["depths"]
    budget = int(r["budget"])
    static = f"elastic-{budget}"
    enforced = c.get(f"routed_enforced_vs_{static}")
    separate = c.get(f"routed_enforced_vs_separate-{budget}")
    seeds = ", ".join(map(str, r["seeds"]))
    lines = [
        "## Routing over elastic depths",
        "",
        f"The router can also choose among the trained depths of one elastic model (docs/elastic.md): `layerprune "
        f"route` on the folder of `train_distill --elastic_depths` keeps the run's depths as its codes (nested, so "
        f"each is the largest depth with some blocks skipped, one set of weights) and trains only the router. Here: "
        f"one elastic run over depths {', '.join(map(str, depths))} of the 12-block toy teacher, routed at a budget "
        f"of {r['budget']:g} blocks, against the static student of that depth (seeds {seeds}; "
        "`benchmarks/elastic_routing_toy.py`, `benchmarks/results/elastic_routing_toy.json`).",
        "",
    ]
    if enforced:
        blocks = t["routed_enforced"]["mean_blocks"]["mean"]
        verdict = f"**Verdict**: routed with the budget enforced on the held-out set ({blocks:.2f} blocks per caption) "
        verdict += _judged_difference(enforced, f"the elastic model's own depth {budget}")
        if separate:
            verdict += ", and " + _judged_difference(separate, f"a depth-{budget} student distilled separately")
        chance = max(r["shuffled"]["p_shuffle_at_least_routed"]) > 0.05  # some seed's router is matched by chance
        verdict += (
            f"; {'and it does no better than' if chance else 'it does better than'} the same depths assigned to the "
            f"captions at random ({100 * t['routed_enforced']['overall']['mean']:.1f}% against "
            f"{100 * r['shuffled']['accuracy']['mean']:.1f}%)"
        )
        lines += [verdict + ".", ""]
    lines += [
        "| model | blocks per held-out caption | all four right (%) | toy score | minus static depth "
        f"{budget} (points, 95% CI) |",
        "|---|---|---|---|---|",
    ]

    def row(label, stat, blocks, diff=None):
        o, toy = stat["overall"], stat["toy_score"]
        d = ""
        if diff:
            lo, hi = diff["bootstrap_95"]
            d = f"{100 * diff['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        return f"| {label} | {blocks} | {100 * o['mean']:.1f} ± {100 * o['std']:.1f} | {toy['mean']:.3f} | {d} |"

    for d in depths:
        lines.append(row(f"elastic, depth {d} (static)", t[f"elastic-{d}"], d))
    if t.get(f"separate-{budget}"):
        lines.append(row(f"depth {budget} distilled separately", t[f"separate-{budget}"], budget))
    for key, label in (
        ("routed", "routed (plain)"),
        ("routed_enforced", "routed, budget enforced on the held-out set"),
    ):
        lines.append(row(label, t[key], f"{t[key]['mean_blocks']['mean']:.2f}", c.get(f"{key}_vs_{static}")))
    sh, orc = r["shuffled"], r["oracle"]
    acc = {d: t[f"elastic-{d}"]["overall"]["mean"] for d in depths}
    mixed = statistics.mean(
        sum(share * acc[d] for share, d in zip(info["heldout_shares"], depths, strict=True))
        for info in r["routers"].values()
    )
    pairs = zip(depths, depths[1:], strict=False)
    steps = " and ".join(f"{100 * (acc[a] - acc[b]):.1f} points from {a} to {b} blocks" for a, b in pairs)
    lines += [
        "",
        f"Why a mix of depths is hard to win with here: accuracy falls {steps}. A mix that averages {budget} blocks "
        f"is therefore less accurate than {budget} blocks for every prompt unless the router sends the prompts that "
        f"need depth to the deeper codes. The router's depth shares, weighted by each depth's accuracy, give "
        f"{100 * mixed:.1f}%; the routed model gets {100 * t['routed_enforced']['overall']['mean']:.1f}%, the same "
        "depths shuffled over the captions "
        f"{100 * sh['accuracy']['mean']:.1f}% (the share of shuffles doing at least as well as the router, per seed: "
        f"{', '.join(f'{x:.2f}' for x in sh['p_shuffle_at_least_routed'])}).",
        "",
        f"Controls from the same images: the enforced assignment shuffled over the captions (the same mix of depths, "
        f"prompts at random; mean of 2000 shuffles) gets {100 * sh['accuracy']['mean']:.1f}% all four right; the best "
        f"assignment of depths to captions that knows every verdict, at a mean of at most the routed one's blocks, "
        f"{100 * orc['accuracy']['mean']:.1f}% ({orc['mean_blocks']['mean']:.2f} blocks): the headroom a router over "
        "these depths has, which no prompt-only router reaches (it includes luck of the noise).",
        "",
        "| seed | train: mean blocks | held-out: mean blocks (plain / enforced) | depth penalty | held-out shares "
        f"(depths {', '.join(map(str, depths))}) |",
        "|---|---|---|---|---|",
    ]
    for seed, info in r["routers"].items():
        shares = " / ".join(f"{100 * x:.0f}%" for x in info["heldout_shares"])
        lines.append(
            f"| {seed} | {info['train_mean_blocks']:.2f} | {info['heldout_mean_blocks']:.2f} / "
            f"{info['heldout_mean_blocks_enforced']:.2f} | {info['depth_penalty']:.3g} | {shares} |"
        )
    s = r["settings"]
    cpu = r.get("cpu_seconds", {})
    lines += [
        "",
        f"Setup: the elastic run distils the 9-block preference-pruned student with `--elastic_depths "
        f"{s['depths']}` for {s['steps']} steps (the recipe of docs/elastic.md: batch 16, lr 2e-4, cosine, feature KD "
        f"at the largest depth); the router: {s['router_steps']} steps on the first {s['router_prompts']} training "
        "captions, uniform marginals, the shared weights frozen, the budget met on its training captions by a depth "
        f"penalty (`routing.json`'s `depth_penalty`). Judged on the {s['eval_prompts']} held-out captions with the "
        "noise of "
        "reproduce_paper.py; a routed caption's image is its image at the depth it is routed to, so every comparison "
        "is image for image, and the 95% intervals are paired bootstraps over the (seed, caption) pairs. CPU time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in cpu.items())
        + f" ({r['machine']}).",
        "",
    ]
    return lines


def budget_section(rows: list[dict]) -> list[str]:
    """The page's part 5: depth on training vs held-out captions, and with the budget enforced per batch."""
    if not rows:
        return []

    def shares(v):
        return " / ".join(f"{x:.0%}" for x in v["shares"])

    def acc(v, plain):
        if not v["changed"]:
            return "unchanged"
        delta = 100 * (v["accuracy"] - plain) if plain is not None else None
        return f"{v['changed']} moved; {100 * v['accuracy']:.1f}%" + (f" ({delta:+.1f})" if delta is not None else "")

    n = rows[0]["batch_size"]
    over = [r for r in rows if r["heldout"]["mean_blocks"] > r["budget"] + 1e-9]
    worst = max(rows, key=lambda r: r["heldout"]["mean_blocks"] - r["budget"])
    lines = [
        "## Budget on unseen prompts",
        "",
        "Every router fitted above, routing the 360 training captions and the 216 held-out ones (router and codes "
        "only: no image is generated for the depth columns). The router meets its budget on its training captions by "
        f"construction; on the held-out captions {len(over)} of {len(rows)} routers run over it, the most "
        f"{worst['heldout']['mean_blocks'] - worst['budget']:.2f} blocks per caption ({worst['router']}).",
        "",
        "`enforce_budget=True` (`RoutedPixArtSigmaPipeline.__call__` / `route`) makes a batch meet the budget: each "
        "prompt takes the code maximising its router score minus λ x the code's depth, with λ >= 0 the smallest "
        "that brings the batch's mean depth within budget (the Lagrangian relaxation of the budget-constrained "
        "assignment, found by bisection; no assignment that runs as few blocks keeps more router score). A batch "
        "within budget is routed as usual. Columns: the held-out set as one batch of 216, and a fixed shuffle of it "
        f"cut into batches of {n}, each enforced on its own; 'moved' counts captions sent to another code than plain "
        "routing sends them, judged (all four right, change in points) when any moved, before fine-tuning.",
        "",
        f"| router | budget | code blocks | train: mean (shares) | held-out: mean (shares) | batches of {n} over "
        f"budget (worst) | enforced on 216: mean, moved, all four | enforced per {n}: mean, moved, all four |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['router']} | {r['budget']:g} | {r['blocks']} | {r['train']['mean_blocks']:.2f} "
            f"({shares(r['train'])}) | {r['heldout']['mean_blocks']:.2f} ({shares(r['heldout'])}) | "
            f"{r['batches_over_budget']} of {r['num_batches']} ({r['max_batch_mean_blocks']:.2f}) | "
            f"{r['enforced_whole']['mean_blocks']:.2f}, {acc(r['enforced_whole'], r['plain_accuracy'])} | "
            f"{r['enforced_batches']['mean_blocks']:.2f}, {acc(r['enforced_batches'], r['plain_accuracy'])} |"
        )

    def deltas(part):
        values = [
            100 * (r[part]["accuracy"] - r["plain_accuracy"])
            for r in rows
            if r[part]["changed"] and r["plain_accuracy"] is not None
        ]
        return f"{min(values):+.1f} to {max(values):+.1f} points" if values else "no change"

    moved = {part: [r for r in rows if r[part]["changed"]] for part in ("enforced_whole", "enforced_batches")}
    lines += [
        "",
        f"Enforced on the whole held-out set, {len(moved['enforced_whole'])} routers change any caption's code (those "
        f"over budget), and all four right moves by {deltas('enforced_whole')}. Enforced per batch of {n}, "
        f"{len(moved['enforced_batches'])} routers change codes: a batch of {n} runs over budget far more often than "
        "the whole set does, so the mean falls below the budget and all four right moves by "
        f"{deltas('enforced_batches')}.",
        "",
        "All four right of plain routing for comparison: the 'routed' rows above (seed by seed in "
        "benchmarks/results/routing_toy.json). Enforcing per batch costs nothing to compute but ties an image to the "
        "other prompts of its batch (a prompt can get a shallower code because its batch-mates run deep), and a batch "
        "of one prompt can then only use codes within budget; without it the budget holds on average over prompts "
        "like the training ones, which is what the training captions show.",
        "",
    ]
    return lines


def finish(result: dict) -> None:
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    write_plot(result, PLOT)
    DOC.write_text(render_page(result))
    print(f"wrote {RESULT}, {DOC} and {PLOT}")


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
