"""The experiment: score, prune, distil and judge on the toy world, cell by cell (see benchmarks/reproduce_paper.py
for what is run). Finished cells are reused, so a killed run resumes and more seeds only add the missing work."""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import sys
import time
from functools import partial
from pathlib import Path

from toybench import saved_or_computed, write_json  # the benchmarks' shared helpers (benchmarks/ is on sys.path)

from .cells import Cells, cell_key, generated_section, mean_std, write_text
from .claims import (
    ABLATIONS,
    BUDGET_RATIOS,
    BUDGET_STEPS,
    CRITERIA,
    DISTILL_CRITERIA,
    LEARNABLE,
    RATIOS,
    SPAN,
    aggregate,
    blocks_to_drop,
    check_claims,
)
from .distil import distil
from .report import render_results, write_budget_plot, write_plot

# The section benchmarks/capacity_toy.py writes into docs/results.md (kept when this script rewrites the page).
CAPACITY_START, CAPACITY_END = "<!-- capacity_toy:start -->", "<!-- capacity_toy:end -->"


def keep_capacity_section(page: str, doc: Path) -> str:
    """``page`` with the section benchmarks/capacity_toy.py wrote into ``doc`` (if any) in place of its markers."""
    kept = generated_section(doc, CAPACITY_START, CAPACITY_END)
    if kept and CAPACITY_START in page and CAPACITY_END in page:
        page = page.split(CAPACITY_START)[0] + kept + page.split(CAPACITY_END, 1)[1]
    return page


def plans_for(importances: dict, ratios, depth: int, learned: dict | None = None) -> dict:
    """``{ratio: {criterion: sorted blocks to drop}}`` with plan ``one_shot``; angular distance also with ``span``.
    ``learned`` maps a removal count ``k`` to the learnable selection trained for exactly that ``k``."""
    from diffusers_layerprune.importance import plan_blocks

    plans = {}
    for ratio in ratios:
        k = blocks_to_drop(ratio, depth)
        plans[ratio] = {name: sorted(plan_blocks(imp, k, "one_shot")) for name, imp in importances.items()}
        if "angular_distance" in importances:
            plans[ratio][SPAN] = sorted(plan_blocks(importances["angular_distance"], k, "span"))
        if learned and k in learned:
            plans[ratio][LEARNABLE] = sorted(plan_blocks(learned[k], k, "one_shot"))
    return plans


def best_criterion(per_seed: dict, ratio: str, criteria) -> str | None:
    """The distilled criterion with the highest mean all-four-right accuracy at ``ratio`` (first in order on ties)."""
    by_criterion = per_seed.get("distilled", {}).get(ratio, {})
    means = {c: mean_std([x["accuracy"]["overall"] for x in by_criterion[c].values()])["mean"]
             for c in criteria if by_criterion.get(c)}  # fmt: skip
    return max(means, key=lambda c: (means[c], -list(criteria).index(c))) if means else None


def parse_args(argv=None, description: str | None = None):
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy")
    p.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="fractions of the blocks to remove")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--criteria", default=",".join(CRITERIA))
    p.add_argument("--distill-criteria", default=",".join(DISTILL_CRITERIA), help='"" skips distillation')
    p.add_argument("--score-prompts", type=int, default=64, help="training captions each scan scores with")
    p.add_argument("--eval-prompts", type=int, default=None, help="held-out captions judged (default: all 216)")
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--num-inference-steps", type=int, default=None, help="default: the model's (toy: 20)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass while scoring and judging")
    p.add_argument("--distill-steps", type=int, default=400)
    p.add_argument("--distill-batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--distill-samples", type=int, default=None, help="cap on distillation captions (tests)")
    p.add_argument("--learn-steps", type=int, default=200, help="training steps of each learnable selection")
    p.add_argument("--learn-batch-size", type=int, default=8, help="prompts per learnable training step")
    p.add_argument(
        "--budget-steps",
        default=",".join(map(str, BUDGET_STEPS)),
        help='longer distillation budgets for the best criterion at --budget-ratios ("" skips the budget curve)',
    )
    p.add_argument(
        "--budget-seeds", default=None, help="seeds of the budget curve (default: all of --seeds; its runs are long)"
    )
    p.add_argument("--budget-ratios", default=",".join(map(str, BUDGET_RATIOS)), help="ratios of the budget curve")
    p.add_argument(
        "--ablations",
        default=",".join(ABLATIONS),
        help="what limits the distilled models: the best criterion at --budget-ratios distilled again (seeds of the "
        f'budget curve, --distill-steps) with loss terms removed or the learning rate scaled; of {", ".join(ABLATIONS)} ("" skips them)',
    )
    p.add_argument(
        "--distill-plans",
        default=None,
        help="models with two stacks (toy-flux): criterion:plan pairs to distil at every ratio, plans mixed, "
        "'double only', 'single only' (default: preference with each plan)",
    )
    p.add_argument(
        "--kd-weightings",
        default="logit_normal",
        help="models with two stacks: KD variants each distilled plan at the goal depth (25%%) is distilled with "
        "again, against the recipe: logit_normal (train_distill --weighting_scheme), lr5x (5x the learning rate), "
        'renders (image-caption KD on renders, half with partial captions); "" skips them',
    )
    p.add_argument(
        "--skip-table", action=argparse.BooleanOptionalAction, default=True,
        help="models with two stacks: judge the teacher with each block skipped (the judge's block importance)",
    )  # fmt: skip
    p.add_argument("--output", default=None, help="cells, importance files, distilled models (default: by model)")
    p.add_argument(
        "--results", default=None, help="the JSON (default: benchmarks/results/reproduce_paper[_MODEL].json)"
    )
    p.add_argument(
        "--doc", default=None, help="the generated page (default: docs/results[_MODEL].md); its plot goes next to it"
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the JSON and the doc from finished cells")
    p.add_argument("--keep-models", action="store_true", help="keep the pruned/distilled pipelines on disk")
    return p.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


class Experiment:
    def __init__(self, args) -> None:
        from diffusers_layerprune.errors import LayerPruneError
        from diffusers_layerprune.importance import CRITERIA_MODULES

        self.args = args
        self.output = Path(args.output)
        self.seeds = [int(s) for s in _names(args.seeds)]
        self.ratios = _floats(args.ratios)
        self.criteria = _names(args.criteria)
        self.distill_criteria = _names(args.distill_criteria)
        for name in {*self.criteria, *self.distill_criteria}:
            if name not in CRITERIA_MODULES:
                raise LayerPruneError(f"unknown criterion {name!r}; known: {', '.join(CRITERIA_MODULES)}")
        missing = [c for c in self.distill_criteria if c not in self.criteria]
        if missing:
            raise LayerPruneError(f"--distill-criteria {', '.join(missing)} must also be in --criteria")
        if not self.ratios or any(not 0 < r < 1 for r in self.ratios):
            raise LayerPruneError(f"--ratios must be fractions in (0, 1), got {args.ratios!r}")
        try:
            self.budget_steps = [int(x) for x in _names(args.budget_steps)]
            self.budget_ratios = _floats(args.budget_ratios)
        except ValueError:
            raise LayerPruneError(
                f"--budget-steps takes step counts and --budget-ratios fractions, separated by commas; got "
                f"{args.budget_steps!r} and {args.budget_ratios!r}"
            ) from None
        if any(n < 1 for n in self.budget_steps):
            raise LayerPruneError(f"--budget-steps must be positive step counts, got {args.budget_steps!r}")
        outside = [r for r in self.budget_ratios if r not in self.ratios]
        if self.budget_steps and outside:
            raise LayerPruneError(
                f"--budget-ratios {', '.join(map(str, outside))} are not among --ratios {args.ratios}: the budget "
                "curve continues a ratio's distillation"
            )
        if self.budget_steps and not self.distill_criteria:
            raise LayerPruneError("--budget-steps needs --distill-criteria (it extends the best distilled criterion)")
        for name, value in (("--learn-steps", args.learn_steps), ("--learn-batch-size", args.learn_batch_size)):
            if value < 1:
                raise LayerPruneError(f"{name} must be at least 1, got {value}")
        self.budget_steps = [n for n in self.budget_steps if n != args.distill_steps]
        self.ablations = _names(args.ablations)
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise LayerPruneError(f"unknown --ablations {', '.join(unknown)}; choose among {', '.join(ABLATIONS)}")
        if self.ablations and not self.distill_criteria:
            raise LayerPruneError(
                "--ablations needs --distill-criteria (they distil the best distilled criterion again)"
            )
        self.budget_seeds = self.seeds if args.budget_seeds is None else [int(x) for x in _names(args.budget_seeds)]
        if not set(self.budget_seeds) <= set(self.seeds):
            raise LayerPruneError(f"--budget-seeds {args.budget_seeds} must be among --seeds {args.seeds}")
        self.cells = Cells(self.output / "cells.jsonl")
        self.distill_tag = self.tag(args.distill_steps)
        self.started = time.time()
        self._pipe = None

    def tag(self, steps: int, ablation: str = "") -> str:
        """Names the distillation settings in a cell's key, so cells of other budgets are never mixed up."""
        a = self.args
        return (
            f"steps{steps}-bs{a.distill_batch_size}-lr{a.learning_rate:g}"
            + (f"-n{a.distill_samples}" if a.distill_samples else "")
            + (f"-{ablation}" if ablation else "")
        )

    # -- models and data (loaded on first use, so --report-only needs nothing) ------------------------------------
    def encode(self, captions) -> dict:
        """The text conditioning of ``captions`` as the model's family encodes it (``ModelFamily.encode``)."""
        from diffusers_layerprune.families import family_of_pipeline

        family = family_of_pipeline(self.pipe)
        return family.encode(self.pipe, list(captions), self.settings.max_sequence_length, self.pipe.device)

    def setup(self) -> None:
        from toybench import load_with_settings

        from diffusers_layerprune.blocks import num_blocks
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        self.pipe, self.settings = load_with_settings(
            self.args.model, self.args.batch_size, self.args.num_inference_steps
        )
        self.scorer = load_scorer("toy")
        self.train_captions = world.captions("train")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        self.embeds = self.encode(self.captions)
        self.negative = self.encode([""])
        self.depth = num_blocks(self.pipe.transformer)  # every stack (Flux: double then single blocks)

    def judge(self, pipe, dropped, seed: int, train: bool = False) -> dict:
        """Judge ``pipe`` with ``dropped`` skipped on the held-out captions, or (``train``) on as many training
        captions (the first ones; the distillation trained on them), with the same noise seeds."""
        from toybench import judged  # benchmarks/ is on sys.path wherever the paper package is imported

        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.generation import generate_from_conditioning

        start = time.perf_counter()
        s = self.settings
        captions, embeds = self.captions, self.embeds
        if train:
            captions = self.train_captions[: len(self.captions)]
            if getattr(self, "train_embeds", None) is None:
                self.train_embeds = self.encode(captions)
            embeds = self.train_embeds
        seeds = [self.args.eval_seed + 1000 * seed + i for i in range(len(captions))]
        with skip_blocks(pipe.transformer, list(dropped)):
            images = generate_from_conditioning(
                pipe,
                embeds,
                self.negative,
                seeds=seeds,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                resolution=s.resolution,
                max_sequence_length=s.max_sequence_length,
                batch_size=self.args.batch_size,
            )
        return {**judged(images, captions, self.scorer), "seconds": time.perf_counter() - start}

    def cell(self, stage: str, seed: int, dropped, compute, variant: str = "") -> dict:
        key = cell_key(stage, seed, dropped, variant)
        record = self.cells.get(key)
        if record is None:
            fields = {
                "stage": stage,
                "seed": seed,
                "dropped": list(dropped),
                **({"variant": variant} if variant else {}),
            }
            record = self.cells.put(key, {**fields, **compute()})
            a = record["accuracy"]
            print(
                f"  {stage:<9} seed {seed} drop {list(dropped)}: all four {100 * a['overall']:.1f}%, "
                f"toy score {record['toy_score']:.3f} ({record['seconds']:.0f} s)",
                flush=True,
            )
        return record

    # -- step 1: importance -------------------------------------------------------------------------------------
    def importances(self, seed: int) -> dict:
        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan, compute_importance

        folder = self.output / f"seed-{seed}" / "importance"
        prompts = random.Random(seed).sample(self.train_captions, self.args.score_prompts)
        scan = ImportanceScan(
            self.pipe,
            PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
            self.settings.__class__(**{**self.settings.__dict__, "seed": 1000 * seed}),
            model_id=self.args.model,
            scorer=self.scorer,
            scorer_name="toy",
        )
        result = {}
        for name in self.criteria:
            if name == LEARNABLE:  # trained per removal count: see learned()
                continue
            result[name], seconds = saved_or_computed(folder / f"{name}.json", partial(compute_importance, name, scan))
            if seconds is None:
                continue
            self.cells.put(f"score|seed={seed}|{name}", {"stage": "score", "seed": seed, "seconds": seconds})
            print(f"  seed {seed}: {name} scored in {seconds:.0f} s", flush=True)
        return result

    def learned(self, seed: int) -> dict:
        """TinyFusion's learnable selection for every removal count of the grid, trained on the captions the scan
        scores with (``--learn-steps`` steps of ``--learn-batch-size`` prompts, seed ``seed``); ``{k: importance}``."""
        import torch

        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan, LayerImportance, compute_importance

        if LEARNABLE not in self.criteria:
            return {}
        folder = self.output / f"seed-{seed}" / "importance"
        prompts = random.Random(seed).sample(self.train_captions, self.args.score_prompts)
        settings = self.settings.__class__(
            **{**self.settings.__dict__, "seed": 1000 * seed, "batch_size": self.args.learn_batch_size}
        )
        learned = {}
        for k in sorted({blocks_to_drop(r, self.depth) for r in self.ratios}):
            path = folder / f"{LEARNABLE}-k{k}-steps{self.args.learn_steps}.json"
            if path.is_file():
                learned[k] = LayerImportance.load(path)
                continue
            scan = ImportanceScan(
                self.pipe,
                PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
                settings,
                model_id=self.args.model,
                show_progress=False,
            )
            start = time.perf_counter()
            with torch.enable_grad():
                imp = compute_importance(LEARNABLE, scan, remove=k, steps=self.args.learn_steps, seed=seed)
            seconds = time.perf_counter() - start
            imp.save(path, plot=False)
            info = imp.extra[LEARNABLE]
            self.cells.put(
                f"score|seed={seed}|{LEARNABLE}-k{k}",
                {"stage": "score", "seed": seed, "seconds": seconds, "remove": k, "images": info.get("images"),
                 "student_passes": info.get("student_passes")},
            )  # fmt: skip
            print(f"  seed {seed}: {LEARNABLE} (remove {k}) trained in {seconds:.0f} s", flush=True)
            learned[k] = imp
        return learned

    def plans(self, importances: dict, learned: dict | None = None) -> dict:
        return plans_for(importances, self.ratios, self.depth, learned)

    # -- step 3: distillation ---------------------------------------------------------------------------------
    def distilled(self, seed: int, dropped, steps: int | None = None, ablation: str = "") -> dict:
        import shutil

        from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline

        tag = "drop-" + "-".join(map(str, dropped))
        steps = steps or self.args.distill_steps
        changed = self.variant(ablation)
        folder = self.output / f"seed-{seed}" / "models" / self.tag(steps, ablation) / tag
        pruned, final = folder / "pruned", folder / "distilled"
        if not (pruned / "model_index.json").is_file():
            save_pruned_pipeline(prune_pipeline(self.pipe, pruned_layers=list(dropped)), pruned, overwrite=True)
        train_seconds = 0.0
        if not (final / "model_index.json").is_file():
            print(f"  distilling {tag} (seed {seed}, {steps} steps{', ' + ablation if ablation else ''})", flush=True)
            train_seconds = distil(
                self.args.model, pruned, final, steps=steps, batch_size=self.args.distill_batch_size,
                learning_rate=self.args.learning_rate * changed.get("lr_scale", 1.0), seed=seed,
                log=folder / "train.log", max_train_samples=self.args.distill_samples,
                extra_args=changed.get("args", ()),
            )  # fmt: skip
            print(f"  distilled {tag} in {train_seconds:.0f} s", flush=True)
        student = load_pipeline(str(final))
        student.set_progress_bar_config(disable=True)
        result = self.judge(student, [], seed)
        if steps != self.args.distill_steps:  # the budget curve: is a longer run limited by what it generalises?
            result["train_captions"] = self.judge(student, [], seed, train=True)
        result["train_seconds"] = train_seconds
        result["seconds"] += train_seconds
        if not self.args.keep_models:
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def variant(self, name: str) -> dict:
        """What distillation variant ``name`` changes (``args`` for train_distill, ``lr_scale``); ``""``: nothing."""
        return ABLATIONS[name] if name else {}

    def run(self) -> None:
        import torch
        from diffusers.utils import logging as diffusers_logging

        # Scoped, not process-wide: main() runs in-process in the tests, and torch.set_grad_enabled(False) left
        # autograd off for whatever trained next.
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # the saved pruned config's extra keys warn on stock loading
        try:
            with torch.no_grad():
                self._run()
        finally:
            diffusers_logging.set_verbosity(verbosity)

    def check_settings(self) -> None:
        """Record the settings every cell depends on in ``OUTPUT/settings.json``; refuse a folder made with others."""
        from diffusers_layerprune.errors import LayerPruneError

        s = self.settings
        # Everything a scored or judged cell depends on, besides its seed, blocks and distillation settings: a
        # folder holds one such setting, so reused cells are always comparable.
        fingerprint = {
            "model": self.args.model,
            "score_prompts": self.args.score_prompts,
            "num_inference_steps": s.num_inference_steps,
            "guidance_scale": s.guidance_scale,
            "resolution": s.resolution,
            "max_sequence_length": s.max_sequence_length,
            "eval_prompts": len(self.captions),
            "eval_seed": self.args.eval_seed,
            "num_layers": self.depth,
        }
        path = self.output / "settings.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            changed = [f"{k} {saved.get(k)} -> {v}" for k, v in fingerprint.items() if saved.get(k) != v]
            if changed:
                raise LayerPruneError(
                    f"{self.output} holds cells made with other settings ({'; '.join(changed)}); "
                    "give another --output, or the same settings"
                )
        write_text(path, json.dumps(fingerprint, indent=2) + "\n")

    def _run(self) -> None:
        self.setup()
        self.check_settings()
        all_plans = {}
        # Before distillation for every seed first (cheap), then the distillation runs (the long part).
        for seed in self.seeds:
            print(f"seed {seed}: scoring {len(self.criteria)} criteria", flush=True)
            plans = self.plans(self.importances(seed), self.learned(seed))
            all_plans[seed] = plans
            self.cell("teacher", seed, [], lambda s=seed: self.judge(self.pipe, [], s))
            if self.budget_steps and seed in self.budget_seeds:  # the reference for accuracy on training captions
                self.cell("teacher_train", seed, [], lambda s=seed: self.judge(self.pipe, [], s, train=True))
            for by_criterion in plans.values():
                for dropped in by_criterion.values():
                    self.cell("pruned", seed, dropped, lambda d=dropped, s=seed: self.judge(self.pipe, d, s))
        for seed in self.seeds:
            for by_criterion in all_plans[seed].values():
                for name in self.distill_criteria:
                    dropped = by_criterion[name]
                    self.cell(
                        "distilled", seed, dropped, lambda d=dropped, s=seed: self.distilled(s, d), self.distill_tag
                    )
        self.plans_by_seed = all_plans
        # The budget curve: the criterion that distilled best at each budget ratio, with longer distillation.
        per_seed = self.collect()["per_seed"]
        # Then what limits it: the same budget with loss terms removed or the learning rate scaled.
        runs = [(steps, "") for steps in self.budget_steps]
        runs += [(self.args.distill_steps, ablation) for ablation in self.ablations]
        for seed in self.budget_seeds:
            for steps, ablation in runs:
                for ratio in self.budget_ratios:
                    best = best_criterion(per_seed, f"{ratio:.2f}", self.distill_criteria)
                    dropped = all_plans[seed][ratio][best]
                    self.cell(
                        "distilled", seed, dropped,
                        lambda d=dropped, s=seed, n=steps, a=ablation: self.distilled(s, d, n, a),
                        self.tag(steps, ablation),
                    )  # fmt: skip

    # -- report ---------------------------------------------------------------------------------------------------
    def collect(self) -> dict:
        """Per-seed cells arranged by stage, ratio and criterion; plans come from the saved importance files."""
        from diffusers_layerprune.importance import LayerImportance

        per_seed: dict = {}
        plans_out: dict = {}
        teacher_cells = []
        depth = None
        for seed in self.seeds:
            folder = self.output / f"seed-{seed}" / "importance"
            importances = {n: LayerImportance.load(folder / f"{n}.json") for n in self.criteria if (folder / f"{n}.json").is_file()}  # fmt: skip
            learned = {}
            if LEARNABLE in self.criteria:
                for path in folder.glob(f"{LEARNABLE}-k*-steps{self.args.learn_steps}.json"):
                    imp = LayerImportance.load(path)
                    learned[imp.extra[LEARNABLE]["remove"]] = imp
            if not importances and not learned:
                continue
            depth = len(next(iter([*importances.values(), *learned.values()])).values)
            teacher = self.cells.get(cell_key("teacher", seed, []))
            if teacher:
                teacher_cells.append(teacher)
            for ratio, plans in plans_for(importances, self.ratios, depth, learned).items():
                r = f"{ratio:.2f}"
                for name, dropped in plans.items():
                    plans_out.setdefault(name, {}).setdefault(r, {})[str(seed)] = dropped
                    for stage in ("pruned", "distilled"):
                        variant = self.distill_tag if stage == "distilled" else ""
                        record = self.cells.get(cell_key(stage, seed, dropped, variant))
                        if record and (stage == "pruned" or name in self.distill_criteria):
                            per_seed.setdefault(stage, {}).setdefault(r, {}).setdefault(name, {})[seed] = record
        settings_file = self.output / "settings.json"
        if not teacher_cells or not settings_file.is_file():
            raise SystemExit(f"no finished cells under {self.output}; run without --report-only first")
        measured = json.loads(settings_file.read_text())
        teacher = {
            "overall": mean_std([c["accuracy"]["overall"] for c in teacher_cells]),
            "toy_score": mean_std([c["toy_score"] for c in teacher_cells]),
        }
        budget = self._budget(per_seed, plans_out)
        budget_cells = [*budget.pop("teacher_train_cells", [])]
        budget_cells += [
            c for e in budget.values() if "steps" in e for row in e["steps"].values() for c in row.pop("cells")
        ]
        budget_cells += [
            c for e in budget.values() for row in e.get("ablations", {}).values() for c in row.pop("cells")
        ]
        used = {id(c) for c in teacher_cells} | {id(c) for c in budget_cells} | {
            id(c) for by_ratio in per_seed.values() for by_c in by_ratio.values() for cells in by_c.values() for c in cells.values()
        }  # fmt: skip
        used_seeds = {c["seed"] for c in teacher_cells}
        seconds = sum(
            r.get("seconds", 0)
            for r in self.cells.records.values()
            if id(r) in used or (r.get("stage") == "score" and r["seed"] in used_seeds)
        )
        return {
            "model": self.args.model,
            "num_layers": depth,
            "seeds": [s for s in self.seeds if any(str(s) in v for p in plans_out.values() for v in p.values())],
            "criteria": self.criteria,
            "distill_criteria": self.distill_criteria,
            "ratios": self.ratios,
            "eval_prompts": measured["eval_prompts"],
            "settings": {
                "score_prompts": measured["score_prompts"],
                "num_inference_steps": measured["num_inference_steps"],
                "guidance_scale": measured["guidance_scale"],
                "resolution": measured["resolution"],
                "distill_steps": self.args.distill_steps,
                "distill_batch_size": self.args.distill_batch_size,
                "learning_rate": self.args.learning_rate,
                "eval_seed": measured["eval_seed"],
                **(
                    {"learn_steps": self.args.learn_steps, "learn_batch_size": self.args.learn_batch_size}
                    if LEARNABLE in self.criteria
                    else {}
                ),
            },
            "teacher": teacher,
            "table": aggregate(per_seed),
            "per_seed": per_seed,
            "plans": plans_out,
            "claims": check_claims(per_seed, {k: v["mean"] for k, v in teacher.items()}),
            **(
                {"budget": budget, "teacher_train": budget.pop("teacher_train_overall", None)}
                if self.budget_steps
                else {}
            ),
            **({"selection_cost": self._costs(used_seeds)} if LEARNABLE in self.criteria else {}),
            "cell_seconds": seconds,
            "total_minutes": seconds / 60,
            "machine": f"{os.cpu_count()}-core CPU",
            "command": "python benchmarks/reproduce_paper.py" + _non_default_args(self.args),
        }

    def _budget(self, per_seed: dict, plans: dict) -> dict:
        """Per budget ratio: the best distilled criterion and its judged cells after every distillation budget."""
        budget = {}
        for ratio in self.budget_ratios if self.budget_steps else []:
            r = f"{ratio:.2f}"
            best = best_criterion(per_seed, r, self.distill_criteria)
            if best is None:
                continue
            entry = {"criterion": best, "steps": {}}
            for steps in sorted([self.args.distill_steps, *self.budget_steps]):
                cells = []
                for seed, dropped in sorted(plans[best][r].items()):
                    cell = self.cells.get(cell_key("distilled", int(seed), dropped, self.tag(steps)))
                    if cell:
                        cells.append(cell)
                if cells:
                    on_train = [c for c in cells if "train_captions" in c]
                    entry["steps"][str(steps)] = {
                        **(
                            {
                                "train_overall": mean_std(
                                    [c["train_captions"]["accuracy"]["overall"] for c in on_train]
                                ),
                                "train_seeds": [c["seed"] for c in on_train],
                            }
                            if on_train
                            else {}
                        ),  # fmt: skip
                        "overall": mean_std([c["accuracy"]["overall"] for c in cells]),
                        "toy_score": mean_std([c["toy_score"] for c in cells]),
                        "seeds": [c["seed"] for c in cells],
                        "train_seconds": mean_std([c.get("train_seconds", 0.0) for c in cells]),
                        "cells": cells,
                    }
            for ablation in self.ablations:
                cells = [
                    c
                    for seed, dropped in sorted(plans[best][r].items())
                    if int(seed) in self.budget_seeds
                    for c in [self.cells.get(cell_key("distilled", int(seed), dropped, self.tag(self.args.distill_steps, ablation)))]
                    if c
                ]  # fmt: skip
                if cells:
                    entry.setdefault("ablations", {})[ablation] = {
                        "label": ABLATIONS[ablation]["label"],
                        "overall": mean_std([c["accuracy"]["overall"] for c in cells]),
                        "toy_score": mean_std([c["toy_score"] for c in cells]),
                        "seeds": [c["seed"] for c in cells],
                        "cells": cells,
                    }
            budget[r] = entry
        teacher = [c for c in (self.cells.get(cell_key("teacher_train", s, [])) for s in self.budget_seeds) if c]
        if budget and teacher:
            budget["teacher_train_overall"] = {
                **mean_std([c["accuracy"]["overall"] for c in teacher]),
                "seeds": [c["seed"] for c in teacher],
            }
            budget["teacher_train_cells"] = teacher
        return budget

    def _costs(self, seeds) -> dict:
        """What each selection cost per seed (mean over seeds): seconds, and for learnable its images and passes."""
        rows: dict = {}
        for record in self.cells.records.values():
            if record.get("stage") != "score" or record["seed"] not in seeds:
                continue
            name = record["key"].split("|")[-1]
            rows.setdefault(name, []).append(record)
        out = {}
        for name, records in sorted(rows.items()):
            out[name] = {"seconds": mean_std([r["seconds"] for r in records])["mean"], "seeds": len(records)}
            for field in ("remove", "images", "student_passes"):
                if records[0].get(field) is not None:
                    out[name][field] = records[0][field]
        return out

    def report(self) -> dict:
        result = self.collect()
        results = write_json(self.args.results, result)
        doc = Path(self.args.doc)
        write_plot(result, doc.with_suffix(".png"))
        write_budget_plot(result, doc.with_name(doc.stem + "_budget.png"))
        write_text(doc, keep_capacity_section(render_results(result), doc))
        print(f"wrote {results}, {doc} and {doc.with_suffix('.png')}")
        for claim in result["claims"]:
            print(f"  {claim['verdict']:>13}: {claim['claim']}")
        return result


def _non_default_args(args) -> str:
    defaults = vars(parse_args([]))
    derived = getattr(args, "derived", {})  # what main() filled in from --model: not flags the user gave
    parts = []
    for name, value in vars(args).items():
        if name in ("report_only", "derived") or value == defaults[name] or derived.get(name) == value:
            continue
        flag = "--" + name.replace("_", "-")
        if value is False:  # a --flag / --no-flag switch turned off
            parts.append("--no-" + name.replace("_", "-"))
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return "".join(" " + shlex.quote(p) for p in parts)


# Where each bundled model's experiment writes by default; another model gets ``results_<model>``.
MODEL_OUTPUTS = {"toy": "", "toy-flux": "_flux"}


def two_stacks(model: str) -> bool:
    """Whether ``model``'s transformer has more than one block stack (Flux: double then single), read from its
    config without loading it."""
    from diffusers_layerprune.families import family_of_config
    from diffusers_layerprune.modeling import read_transformer_config

    config = read_transformer_config(model)
    return config is not None and len(family_of_config(config, model).stacks) > 1


def main(argv=None, description: str | None = None) -> None:
    args = parse_args(argv, description)
    from diffusers_layerprune.errors import LayerPruneError

    suffix = MODEL_OUTPUTS.get(args.model, "_" + Path(str(args.model)).name.replace("-", "_"))
    args.output = args.output or f"runs/reproduce_paper{suffix}"
    args.results = args.results or f"benchmarks/results/reproduce_paper{suffix}.json"
    args.doc = args.doc or f"docs/results{suffix}.md"
    args.derived = {
        "output": f"runs/reproduce_paper{suffix}",
        "results": f"benchmarks/results/reproduce_paper{suffix}.json",
        "doc": f"docs/results{suffix}.md",
    }
    try:
        if two_stacks(args.model):  # which stack to prune: benchmarks/paper/stacks.py
            from .stacks import DEFAULT_DISTILL_PLANS, StackExperiment

            if args.distill_plans is None:
                args.distill_plans = DEFAULT_DISTILL_PLANS
            # The PixArt grid's distillation criteria, budget curve and ablations do not apply here.
            args.distill_criteria, args.budget_steps, args.ablations = "", "", ""
            args.derived.update(distill_criteria="", budget_steps="", ablations="")
            if args.distill_plans == DEFAULT_DISTILL_PLANS:
                args.derived["distill_plans"] = args.distill_plans
            experiment = StackExperiment(args)
        else:
            experiment = Experiment(args)
    except LayerPruneError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if not args.report_only:
        try:
            experiment.run()
        except LayerPruneError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        print(f"{experiment.cells.computed} cells computed, {len(experiment.cells.records)} in {experiment.cells.path}")
    experiment.report()
    print(f"done in {(time.time() - experiment.started) / 60:.1f} min")
