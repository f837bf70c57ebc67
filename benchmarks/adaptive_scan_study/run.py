"""Running the adaptive-scan study: both scans per seed through one ImportanceScan (shared units, resumable), the
judged cells, the proxies and the exhaustive choice's spread, and the result they make. Everything finished under
``--output`` is reused."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import time
from collections import Counter

from paper.cells import Cells  # the toy-world grids' cell store
from toybench import load_with_settings  # the toy benchmarks' shared pieces

from .claims import judged_option, mean_and_se, paired, per_ratio

EVAL_SEED = 100_000


def tag(args, tolerance: float | None = None) -> str:
    tolerance = args.tolerance if tolerance is None else tolerance
    return f"n{args.score_prompts}-r{args.round_prompts}-tol{tolerance:g}-conf{args.confidence:g}"


def suffix(steps: int | None) -> str:
    """File-name part of a proxy scan (``None``: the full setting)."""
    return "" if steps is None else f"-steps{steps}"


class Runner:
    def __init__(self, args) -> None:
        self.args = args
        self.cells = Cells(args.output / "cells.jsonl")
        self.ready = False

    def setup(self) -> None:
        import torch

        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        torch.set_num_threads(2)
        self.pipe, self.settings = load_with_settings("toy", self.args.batch_size)
        self.scorer = load_scorer("toy")
        self.train = world.captions("train")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        length = self.settings.max_sequence_length
        self.embeds = encode_prompts(self.pipe, self.captions, max_sequence_length=length)
        self.negative = encode_prompts(self.pipe, [""], max_sequence_length=length)
        self.depth = len(self.pipe.transformer.transformer_blocks)
        self.ready = True

    def scan(self, seed: int, steps: int | None = None):
        """The scan of ``seed``'s prompt budget; ``steps``: a proxy with fewer sampler steps (same prompts, same
        initial noise), its own progress file."""
        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan

        prompts = random.Random(seed).sample(self.train, self.args.score_prompts)
        settings = {**self.settings.__dict__, "seed": 1000 * seed}
        if steps is not None:
            settings["num_inference_steps"] = steps
        return ImportanceScan(
            self.pipe,
            PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
            self.settings.__class__(**settings),
            model_id="toy",
            scorer=self.scorer,
            scorer_name="toy",
            progress_path=self.args.output / f"seed-{seed}" / f"scan{suffix(steps)}.json",
            show_progress=False,
        )

    def importances(self, seed: int, ks: list[int], tolerance: float | None = None, steps: int | None = None) -> dict:
        """``{"exhaustive": imp, k: adaptive imp}``, computed once and kept as importance files (``steps``: the
        proxy scans with that many sampler steps)."""
        from diffusers_layerprune.importance import LayerImportance, compute_importance
        from diffusers_layerprune.importance.adaptive import adaptive_preference

        folder = self.args.output / f"seed-{seed}"
        out, scan = {}, None
        for k in ks:
            path = folder / f"adaptive-k{k}-{tag(self.args, tolerance)}{suffix(steps)}.json"
            if path.is_file():
                out[k] = LayerImportance.load(path)
                continue
            if self.args.report_only:
                raise SystemExit(f"{path} is missing; run without --report-only first")
            if not self.ready:
                self.setup()
            scan = scan or self.scan(seed, steps)
            start, before = time.perf_counter(), scan.units_computed
            out[k] = adaptive_preference(
                scan,
                k,
                round_prompts=self.args.round_prompts,
                confidence=self.args.confidence,
                tolerance=self.args.tolerance if tolerance is None else tolerance,
            )
            out[k].extra["adaptive"]["seconds"] = time.perf_counter() - start
            out[k].extra["adaptive"]["units_computed_here"] = scan.units_computed - before
            out[k].save(path, plot=False)
            a = out[k].extra["adaptive"]
            print(f"seed {seed} k={k}: adaptive {a['images']} / {a['exhaustive_images']} images", flush=True)
        path = folder / f"exhaustive-n{self.args.score_prompts}{suffix(steps)}.json"
        if path.is_file():
            out["exhaustive"] = LayerImportance.load(path)
        else:
            if self.args.report_only:
                raise SystemExit(f"{path} is missing; run without --report-only first")
            if not self.ready:
                self.setup()
            scan = scan or self.scan(seed, steps)
            start = time.perf_counter()
            out["exhaustive"] = compute_importance("preference", scan)
            out["exhaustive"].extra["seconds"] = time.perf_counter() - start
            out["exhaustive"].save(path, plot=False)
            print(
                f"seed {seed}: exhaustive scan{suffix(steps)} in {out['exhaustive'].extra['seconds']:.0f} s", flush=True
            )
        return out

    def judged(self, seed: int, dropped: list[int]) -> dict:
        key = f"seed={seed}|drop={','.join(map(str, dropped))}|eval={self.args.eval_prompts}"
        cached = self.cells.get(key)
        if cached is not None:
            return cached
        if not self.ready:
            self.setup()
        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.modeling import generate_from_embeddings
        from diffusers_layerprune.toy.judge import judge

        start = time.perf_counter()
        s = self.settings
        with skip_blocks(self.pipe.transformer, dropped):
            images = generate_from_embeddings(
                self.pipe,
                *self.embeds,
                self.negative,
                seeds=[EVAL_SEED + 1000 * seed + i for i in range(len(self.captions))],
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                resolution=s.resolution,
                max_sequence_length=s.max_sequence_length,
                batch_size=4 * self.args.batch_size,
            )
        report = judge(images, self.captions)
        record = {
            "seed": seed,
            "dropped": dropped,
            "overall": float(report.accuracy["overall"]),
            "correct": [bool(c) for c in report.correct["overall"]],
            "seconds": time.perf_counter() - start,
        }
        record = self.cells.put(key, record)
        print(f"seed {seed} drop {dropped}: all four right {100 * record['overall']:.1f}%", flush=True)
        return record


def run(args) -> dict:
    from diffusers_layerprune.importance.stability import selection_stability

    runner = Runner(args)
    depth = 12
    ks = sorted({max(1, round(r * depth)) for r in args.ratios})
    cells = []
    for seed in args.seeds:
        if args.report_only and not (args.output / f"seed-{seed}" / f"exhaustive-n{args.score_prompts}.json").is_file():
            raise SystemExit(f"no finished scans for seed {seed} under {args.output}; run without --report-only first")
        imps = runner.importances(seed, ks)
        exhaustive = imps["exhaustive"]
        for ratio in args.ratios:
            k = max(1, round(ratio * depth))
            adaptive = imps[k]
            chosen_e, chosen_a = exhaustive.least_important(k), adaptive.least_important(k)
            if args.report_only and any(
                f"seed={seed}|drop={','.join(map(str, c))}|eval={args.eval_prompts}" not in runner.cells.records
                for c in (chosen_e, chosen_a)
            ):
                raise SystemExit(f"seed {seed}, k={k} was not judged yet; run without --report-only first")
            judged_e, judged_a = runner.judged(seed, chosen_e), runner.judged(seed, chosen_a)
            diff, se = paired(judged_a["correct"], judged_e["correct"])
            a = adaptive.extra["adaptive"]
            stability = selection_stability(exhaustive, k, draws=1000, seed=seed)
            cells.append(
                {
                    "seed": seed,
                    "ratio": ratio,
                    "remove": k,
                    "exhaustive": {
                        "selection": chosen_e,
                        "images": (depth + 1) * args.score_prompts,
                        "overall": judged_e["overall"],
                        "bootstrap_probability": stability["probability"],
                        "tied": stability["tied"],
                    },
                    "adaptive": {
                        "selection": chosen_a,
                        "images": a["images"],
                        "rounds": len(a["rounds"]),
                        "settled": a["settled"],
                        "prompts_per_block": a["prompts_per_block"],
                        "overall": judged_a["overall"],
                    },
                    "image_ratio": a["images"] / ((depth + 1) * args.score_prompts),
                    "overall_difference": diff,
                    "overall_difference_se": se,
                }
            )
    summary = {}
    for ratio in args.ratios:
        rows = [c for c in cells if c["ratio"] == ratio]
        d_all = []
        for c in rows:
            key = lambda sel, s=c["seed"]: f"seed={s}|drop={','.join(map(str, sel))}|eval={args.eval_prompts}"  # noqa: E731
            ca, ce = (
                runner.cells.records[key(c["adaptive"]["selection"])],
                runner.cells.records[key(c["exhaustive"]["selection"])],
            )
            d_all += [float(x) - float(y) for x, y in zip(ca["correct"], ce["correct"], strict=True)]
        summary[str(ratio)] = {
            "remove": rows[0]["remove"],
            "image_ratio_mean": statistics.mean(c["image_ratio"] for c in rows),
            "exhaustive_overall_mean": statistics.mean(c["exhaustive"]["overall"] for c in rows),
            "adaptive_overall_mean": statistics.mean(c["adaptive"]["overall"] for c in rows),
            **mean_and_se(d_all),
            "same_selection": sum(c["adaptive"]["selection"] == c["exhaustive"]["selection"] for c in rows),
            "n": len(rows),
        }
    sweep, option_rows = [], {}
    for tolerance in sorted({*args.sweep_tolerances, args.tolerance}):
        rows = []
        for seed in args.seeds:
            imps = runner.importances(seed, ks, tolerance)
            exhaustive = imps["exhaustive"]
            for ratio in args.ratios:
                k = max(1, round(ratio * depth))
                chosen_e, chosen_a = exhaustive.least_important(k), imps[k].least_important(k)
                judged_e, judged_a = runner.judged(seed, chosen_e), runner.judged(seed, chosen_a)
                rows.append(
                    {
                        "seed": seed,
                        "ratio": ratio,
                        "overall": judged_a["overall"],
                        "cost": imps[k].extra["adaptive"]["images"] / ((depth + 1) * args.score_prompts),
                        "same": chosen_a == chosen_e,
                        "d": [
                            float(x) - float(y) for x, y in zip(judged_a["correct"], judged_e["correct"], strict=True)
                        ],
                    }
                )
        entry = {"tolerance": tolerance, "image_ratio_mean": statistics.mean(r["cost"] for r in rows)}
        entry["per_cell"] = [{key: r[key] for key in ("seed", "ratio", "overall")} for r in rows]
        entry["same_selection"] = f"{sum(r['same'] for r in rows)} of {len(rows)}"
        entry |= per_ratio(rows, args.ratios)
        sweep.append(entry)
        option_rows[f"adaptive, tolerance {tolerance:g}"] = rows
    proxies = []
    for steps in args.proxy_steps:
        entry, rows = proxy_entry(args, runner, ks, steps)
        proxies.append(entry)
        for kind in ("exhaustive", "adaptive"):
            name = f"{kind} at {steps} of {entry['full_steps']} sampler steps" + (
                f", tolerance {args.tolerance:g}" if kind == "adaptive" else ""
            )
            option_rows[name] = [{"seed": r["seed"], "ratio": r["ratio"]} | r[kind] for r in rows]
    spread = {}
    if args.spread_draws:
        for seed in args.seeds:
            exhaustive = runner.importances(seed, ks)["exhaustive"]
            for ratio in args.ratios:
                k = max(1, round(ratio * depth))
                spread[(seed, ratio)] = exhaustive_spread(args, runner, seed, exhaustive, k)
    all_ratio = statistics.mean(c["image_ratio"] for c in cells)
    options = []
    for name, rows in option_rows.items():
        option = {"name": name} | judged_option(rows, args.ratios, spread)
        if args.confirmation_seeds:
            option["confirmation"] = judged_option(rows, args.ratios, spread, args.confirmation_seeds)
        options.append(option)
    good = sorted((o for o in options if o["cost"] <= 1 / 3 and o["within_noise"]), key=lambda o: o["cost"])
    good_spread = sorted((o for o in options if o["cost"] <= 1 / 3 and o["within_spread"]), key=lambda o: o["cost"])
    confirmed = [o for o in options if "confirmation" in o and o["confirmation"]["cost"] <= 1 / 3]
    return {
        "benchmark": "bench_adaptive_scan",
        "settings": {
            "seeds": args.seeds,
            "ratios": args.ratios,
            "score_prompts": args.score_prompts,
            "round_prompts": args.round_prompts,
            "tolerance": args.tolerance,
            "confidence": args.confidence,
            "eval_prompts": args.eval_prompts,
            "eval_seed": EVAL_SEED,
            "model": "toy",
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "cells": cells,
        "summary": summary,
        "image_ratio_mean": all_ratio,
        "tolerance_sweep": sweep,
        "proxies": proxies,
        "exhaustive_spread": [
            {"seed": seed, "ratio": ratio, **value} for (seed, ratio), value in sorted(spread.items())
        ],
        "options": options,
        "target": {
            "image_ratio": 1 / 3,
            "met": all_ratio <= 1 / 3,
            "met_by": [o["name"] for o in good],
            "met_by_against_the_spread": [o["name"] for o in good_spread],
            "confirmation_seeds": args.confirmation_seeds,
            "met_by_on_confirmation_seeds": [o["name"] for o in confirmed if o["confirmation"]["within_noise"]],
            "met_by_against_the_spread_on_confirmation_seeds": [
                o["name"] for o in confirmed if o["confirmation"]["within_spread"]
            ],
            "note": "cost: generations at the full setting's sampler steps, as a share of the exhaustive scan's; "
            "within noise: the difference to the exhaustive choice is above -2 standard errors at every removal count",
        },
    }


def exhaustive_spread(args, runner: Runner, seed: int, exhaustive, k: int, coverage: float = 0.9) -> dict:
    """The exhaustive choice's own noise: the ``k`` blocks chosen on bootstrap resamples of its prompts (what
    another draw of the same number of prompts would pick; ties broken as ``least_important`` does), the most frequent
    choices covering ``coverage`` of the draws judged; the frequency-weighted mean and standard deviation of their
    judged accuracy."""
    import numpy as np

    from diffusers_layerprune.importance.stability import _smallest_k

    per_prompt = np.asarray(exhaustive.per_prompt, dtype=np.float64)
    n = per_prompt.shape[1]
    draws = np.random.default_rng(seed).integers(0, n, size=(args.spread_draws, n))
    means = per_prompt[:, draws].mean(axis=2).T  # [draws, L]
    counts = Counter(tuple(int(b) for b in row) for row in _smallest_k(means, k))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    judged, covered = [], 0
    for selection, count in ranked:
        if covered >= coverage * args.spread_draws:
            break
        judged.append(
            {"selection": list(selection), "draws": count, "overall": runner.judged(seed, list(selection))["overall"]}
        )
        covered += count
    weight = sum(j["draws"] for j in judged)
    mean = sum(j["draws"] * j["overall"] for j in judged) / weight
    sd = math.sqrt(sum(j["draws"] * (j["overall"] - mean) ** 2 for j in judged) / weight)
    return {"mean": mean, "sd": sd, "choices": judged, "coverage": weight / args.spread_draws, "distinct": len(counts)}


def proxy_entry(args, runner: Runner, ks: list[int], steps: int) -> tuple[dict, list[dict]]:
    """The proxies with ``steps`` sampler steps against the full exhaustive scan, seeds pooled; and the rows per seed
    and removal count (with the per-caption differences ``d``)."""
    from diffusers_layerprune.importance.stability import rank_agreement

    depth = 12
    rows, spearman, full_steps = [], [], None
    for seed in args.seeds:
        full = runner.importances(seed, ks)
        proxy = runner.importances(seed, ks, steps=steps)
        full_steps = full["exhaustive"].metadata["num_inference_steps"]
        if proxy["exhaustive"].metadata["num_inference_steps"] != steps:
            raise SystemExit(f"seed {seed}: the {steps}-step proxy scan on disk was made with other settings")
        spearman.append(rank_agreement(proxy["exhaustive"], full["exhaustive"], ks[0])["spearman"])
        for ratio in args.ratios:
            k = max(1, round(ratio * depth))
            reference = full["exhaustive"].least_important(k)
            judged_ref = runner.judged(seed, reference)
            row = {"seed": seed, "ratio": ratio, "remove": k, "reference": reference}
            for kind, imp in (("exhaustive", proxy["exhaustive"]), ("adaptive", proxy[k])):
                chosen = imp.least_important(k)
                judged = runner.judged(seed, chosen)
                images = imp.extra["adaptive"]["images"] if kind == "adaptive" else (depth + 1) * args.score_prompts
                row[kind] = {
                    "selection": chosen,
                    "overlap": len(set(chosen) & set(reference)),
                    "images": images,
                    "cost": images * steps / ((depth + 1) * args.score_prompts * full_steps),
                    "overall": judged["overall"],
                    "d": [float(x) - float(y) for x, y in zip(judged["correct"], judged_ref["correct"], strict=True)],
                }
            rows.append(row)
    entry = {
        "steps": steps,
        "full_steps": full_steps,
        "spearman_per_seed": spearman,
        "spearman_mean": statistics.mean(spearman),
        "spearman_min": min(spearman),
    }
    for kind in ("exhaustive", "adaptive"):
        e = {
            "cost_mean": statistics.mean(r[kind]["cost"] for r in rows),
            "same_selection": f"{sum(r[kind]['selection'] == r['reference'] for r in rows)} of {len(rows)}",
            "cells": [
                {key: r[key] for key in ("seed", "ratio", "remove", "reference")}
                | {key: v for key, v in r[kind].items() if key != "d"}
                for r in rows
            ],
        } | per_ratio([{"ratio": r["ratio"], "d": r[kind]["d"]} for r in rows], args.ratios)
        entry[kind] = e
    return entry, rows
