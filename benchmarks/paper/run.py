"""The experiment: score, prune, distil and judge on the toy world, cell by cell (see benchmarks/reproduce_paper.py
for what is run). Finished cells are reused, so a killed run resumes and more seeds only add the missing work."""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .cells import Cells, cell_key, mean_std, write_text
from .claims import CRITERIA, DISTILL_CRITERIA, METRICS, RATIOS, SPAN, aggregate, blocks_to_drop, check_claims
from .report import render_results, write_plot

ROOT = Path(__file__).resolve().parents[2]
TRAIN_SCRIPT = ROOT / "training" / "train_distill.py"


def plans_for(importances: dict, ratios, depth: int) -> dict:
    """``{ratio: {criterion: sorted blocks to drop}}`` with plan ``one_shot``; angular distance also with ``span``."""
    from diffusers_layerprune.importance import plan_blocks

    plans = {}
    for ratio in ratios:
        k = blocks_to_drop(ratio, depth)
        plans[ratio] = {name: sorted(plan_blocks(imp, k, "one_shot")) for name, imp in importances.items()}
        if "angular_distance" in importances:
            plans[ratio][SPAN] = sorted(plan_blocks(importances["angular_distance"], k, "span"))
    return plans


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
    p.add_argument("--output", default="runs/reproduce_paper", help="cells, importance files, distilled models")
    p.add_argument("--results", default="benchmarks/results/reproduce_paper.json")
    p.add_argument("--doc", default="docs/results.md", help="the generated page; its plot goes next to it (.png)")
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
        self.cells = Cells(self.output / "cells.jsonl")
        self.distill_tag = f"steps{args.distill_steps}-bs{args.distill_batch_size}-lr{args.learning_rate:g}" + (
            f"-n{args.distill_samples}" if args.distill_samples else ""
        )
        self.started = time.time()
        self._pipe = None

    # -- models and data (loaded on first use, so --report-only needs nothing) ------------------------------------
    def setup(self) -> None:
        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.importance import ScanSettings
        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        self.pipe = load_pipeline(self.args.model)
        self.pipe.set_progress_bar_config(disable=True)
        d = generation_defaults(self.args.model, self.pipe)
        self.settings = ScanSettings(
            num_inference_steps=self.args.num_inference_steps or d["num_inference_steps"],
            guidance_scale=d["guidance_scale"],
            resolution=d["resolution"],
            max_sequence_length=d["max_sequence_length"],
            batch_size=self.args.batch_size,
        )
        self.scorer = load_scorer("toy")
        self.train_captions = world.captions("train")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        length = self.settings.max_sequence_length
        self.embeds = encode_prompts(self.pipe, self.captions, max_sequence_length=length)
        self.negative = encode_prompts(self.pipe, [""], max_sequence_length=length)
        self.depth = len(self.pipe.transformer.transformer_blocks)

    def judge(self, pipe, dropped, seed: int) -> dict:
        from diffusers_layerprune.blocks import skip_blocks
        from diffusers_layerprune.modeling import generate_from_embeddings
        from diffusers_layerprune.toy.judge import judge

        start = time.perf_counter()
        s = self.settings
        seeds = [self.args.eval_seed + 1000 * seed + i for i in range(len(self.captions))]
        with skip_blocks(pipe.transformer, list(dropped)):
            images = generate_from_embeddings(
                pipe,
                *self.embeds,
                self.negative,
                seeds=seeds,
                num_inference_steps=s.num_inference_steps,
                guidance_scale=s.guidance_scale,
                resolution=s.resolution,
                max_sequence_length=s.max_sequence_length,
                batch_size=self.args.batch_size,
            )
        report = judge(images, self.captions)
        return {
            "accuracy": {m: float(report.accuracy[m]) for m in METRICS},
            "toy_score": float(self.scorer(images, self.captions).mean()),
            "seconds": time.perf_counter() - start,
        }

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
        from diffusers_layerprune.importance import ImportanceScan, LayerImportance, compute_importance

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
            path = folder / f"{name}.json"
            if path.is_file():
                result[name] = LayerImportance.load(path)
                continue
            start = time.perf_counter()
            result[name] = compute_importance(name, scan)
            result[name].save(path)
            seconds = time.perf_counter() - start
            self.cells.put(f"score|seed={seed}|{name}", {"stage": "score", "seed": seed, "seconds": seconds})
            print(f"  seed {seed}: {name} scored in {seconds:.0f} s", flush=True)
        return result

    def plans(self, importances: dict) -> dict:
        return plans_for(importances, self.ratios, self.depth)

    # -- step 3: distillation ---------------------------------------------------------------------------------
    def distilled(self, seed: int, dropped) -> dict:
        import shutil

        from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline

        tag = "drop-" + "-".join(map(str, dropped))
        folder = self.output / f"seed-{seed}" / "models" / self.distill_tag / tag
        pruned, final = folder / "pruned", folder / "distilled"
        if not (pruned / "model_index.json").is_file():
            save_pruned_pipeline(prune_pipeline(self.pipe, pruned_layers=list(dropped)), pruned, overwrite=True)
        train_seconds = 0.0
        if not (final / "model_index.json").is_file():
            resume = ["--resume_from_checkpoint", "latest"] if any(final.glob("checkpoint-*")) else []
            steps = self.args.distill_steps
            cmd = [
                sys.executable, str(TRAIN_SCRIPT),
                "--teacher_model", self.args.model,
                "--student_model", str(pruned),
                "--output_dir", str(final),
                "--max_train_steps", str(steps),
                "--train_batch_size", str(self.args.distill_batch_size),
                "--learning_rate", str(self.args.learning_rate),
                "--lr_scheduler", "cosine",
                "--lr_warmup_steps", str(max(1, steps // 20)),
                "--checkpointing_steps", str(max(1, steps // 2)),
                "--checkpoints_total_limit", "1",
                "--seed", str(seed),
                "--report_to", "none",
                *(["--max_train_samples", str(self.args.distill_samples)] if self.args.distill_samples else []),
                *resume,
            ]  # fmt: skip
            start = time.perf_counter()
            print(f"  distilling {tag} (seed {seed}, {steps} steps)", flush=True)
            log = folder / "train.log"
            with log.open("a") as f:
                code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
            if code != 0:
                tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
                raise RuntimeError(f"distillation failed ({log}):\n{tail}")
            train_seconds = time.perf_counter() - start
            print(f"  distilled {tag} in {train_seconds:.0f} s", flush=True)
        student = load_pipeline(str(final))
        student.set_progress_bar_config(disable=True)
        result = self.judge(student, [], seed)
        result["train_seconds"] = train_seconds
        result["seconds"] += train_seconds
        if not self.args.keep_models:
            shutil.rmtree(folder, ignore_errors=True)
        return result

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

    def _run(self) -> None:
        from diffusers_layerprune.errors import LayerPruneError

        self.setup()
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
        all_plans = {}
        # Before distillation for every seed first (cheap), then the distillation runs (the long part).
        for seed in self.seeds:
            print(f"seed {seed}: scoring {len(self.criteria)} criteria", flush=True)
            plans = self.plans(self.importances(seed))
            all_plans[seed] = plans
            self.cell("teacher", seed, [], lambda s=seed: self.judge(self.pipe, [], s))
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
            if not importances:
                continue
            depth = len(next(iter(importances.values())).values)
            teacher = self.cells.get(cell_key("teacher", seed, []))
            if teacher:
                teacher_cells.append(teacher)
            for ratio, plans in plans_for(importances, self.ratios, depth).items():
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
        used = {id(c) for c in teacher_cells} | {
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
            },
            "teacher": teacher,
            "table": aggregate(per_seed),
            "per_seed": per_seed,
            "plans": plans_out,
            "claims": check_claims(per_seed, {k: v["mean"] for k, v in teacher.items()}),
            "cell_seconds": seconds,
            "total_minutes": seconds / 60,
            "machine": f"{os.cpu_count()}-core CPU",
            "command": "python benchmarks/reproduce_paper.py" + _non_default_args(self.args),
        }

    def report(self) -> dict:
        result = self.collect()
        results = Path(self.args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        write_text(results, json.dumps(result, indent=2) + "\n")
        doc = Path(self.args.doc)
        write_plot(result, doc.with_suffix(".png"))
        write_text(doc, render_results(result))
        print(f"wrote {results}, {doc} and {doc.with_suffix('.png')}")
        for claim in result["claims"]:
            print(f"  {claim['verdict']:>13}: {claim['claim']}")
        return result


def _non_default_args(args) -> str:
    defaults = vars(parse_args([]))
    parts = []
    for name, value in vars(args).items():
        if name == "report_only" or value == defaults[name]:
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return "".join(" " + shlex.quote(p) for p in parts)


def main(argv=None, description: str | None = None) -> None:
    args = parse_args(argv, description)
    from diffusers_layerprune.errors import LayerPruneError

    try:
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
