"""Running the sparsity study's cells on the toy world: the curves, the depth + sparsity pairs, the folder sizes.
Cells are appended to ``OUTPUT/cells.jsonl`` as they finish; a re-run skips finished cells."""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import time
from pathlib import Path

from paper.cells import Cells  # the append-only cell store of every toy-world grid
from paper.distil import distil  # the same distillation recipe as reproduce_paper.py
from toybench import judged  # the toy judge's record, shared by the toy benchmarks

from .claims import COMPONENT_SETS, METHODS, N_M, SPARSITIES
from .report import _load_note


class Benchmark:
    def __init__(self, args) -> None:
        self.args = args
        self.output = Path(args.output)
        self.cells = Cells(self.output / "cells.jsonl")
        self.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        self.combo_seeds = [int(x) for x in args.combo_seeds.split(",") if x.strip()]
        self.order_seeds = [int(x) for x in args.order_seeds.split(",") if x.strip()]
        self._norms: dict = {}

    def setup(self) -> None:
        import torch

        from diffusers_layerprune.modeling import generation_defaults, load_pipeline
        from diffusers_layerprune.scorers import load_scorer
        from diffusers_layerprune.toy import world

        torch.set_num_threads(self.args.threads)
        self.pipe = load_pipeline("toy")
        self.pipe.set_progress_bar_config(disable=True)
        d = generation_defaults("toy", self.pipe)
        self.gen = {k: d[k] for k in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length")}
        self.scorer = load_scorer("toy")
        self.captions = world.captions("heldout")[: self.args.eval_prompts]
        self.train_captions = world.captions("train")
        self.dense = {
            name: {k: v.detach().clone() for k, v in getattr(self.pipe, name).state_dict().items()}
            for name in ("text_encoder", "transformer")
        }

    def restore(self) -> None:
        for name, state in self.dense.items():
            getattr(self.pipe, name).load_state_dict(state)

    def evaluate(self, pipe) -> dict:
        import torch

        from diffusers_layerprune.data import encode_prompts
        from diffusers_layerprune.modeling import generate_from_embeddings

        start = time.perf_counter()
        g = self.gen
        with torch.no_grad():
            embeds = encode_prompts(pipe, self.captions, max_sequence_length=g["max_sequence_length"])
            negative = encode_prompts(pipe, [""], max_sequence_length=g["max_sequence_length"])
            images = generate_from_embeddings(
                pipe,
                *embeds,
                negative,
                seeds=[self.args.eval_seed + i for i in range(len(self.captions))],
                batch_size=self.args.batch_size,
                **g,
            )
        return {**judged(images, self.captions, self.scorer), "seconds": time.perf_counter() - start}

    def cell(self, key: str, fields: dict, compute) -> dict:
        record = self.cells.get(key)
        if record is None:
            record = self.cells.put(key, {**fields, **compute(), "load_average": os.getloadavg()[0]})
            print(
                f"  {key}: all four {100 * record['accuracy']['overall']:.1f}%, toy score {record['toy_score']:.3f} "
                f"({record['seconds']:.0f} s)",
                flush=True,
            )
        return record

    def calibration_prompts(self, seed: int):
        from diffusers_layerprune.data import PromptSet

        chosen = random.Random(seed).sample(self.train_captions, self.args.calibration_prompts)
        return PromptSet(chosen, "toy:train", meta={"sample_seed": seed, "limit": self.args.calibration_prompts})

    def norms(self, seed: int):
        """Input norms of the dense model for both components, one pass per seed (shared by every Wanda cell)."""
        if seed not in self._norms:
            from diffusers_layerprune.sparsity import collect_input_norms

            self.restore()
            self._norms[seed] = collect_input_norms(
                self.pipe,
                ["text_encoder", "transformer"],
                self.calibration_prompts(seed),
                seed=1000 * seed,
                batch_size=self.args.batch_size,
                **self.gen,
            )
        return self._norms[seed]

    # -- 1. curves ---------------------------------------------------------------------------------------------
    def curves(self) -> None:
        from diffusers_layerprune.sparsity import sparsify_pipeline

        def dense():
            self.restore()
            return {"achieved": 0.0, **self.evaluate(self.pipe)}

        self.cell("dense", {"stage": "dense", "seed": None}, dense)
        points = [("unstructured", s) for s in SPARSITIES] + [(p, None) for p in N_M]
        for method in METHODS:
            for seed in self.seeds if method == "wanda" else [None]:
                for component in COMPONENT_SETS:
                    for pattern, sparsity in points:
                        level = sparsity if sparsity is not None else 1 - int(pattern[0]) / int(pattern[2])
                        key = f"curve|{component}|{method}|{pattern}|{level:g}|seed={seed}"

                        def compute(component=component, method=method, pattern=pattern, sparsity=sparsity, seed=seed):
                            norms = self.norms(seed) if method == "wanda" else None
                            self.restore()
                            record = sparsify_pipeline(
                                self.pipe,
                                component,
                                sparsity=sparsity,
                                method=method,
                                pattern=pattern,
                                input_norms=norms,
                            )
                            zeros = sum(c.zeros for c in record.components.values())
                            weights = sum(c.weights for c in record.components.values())
                            result = self.evaluate(self.pipe)
                            return {"achieved": zeros / weights, **result}

                        fields = {
                            "stage": "curve",
                            "component": component,
                            "method": method,
                            "pattern": pattern,
                            "sparsity": round(level, 6),
                            "seed": seed,
                        }
                        self.cell(key, fields, compute)
        self.restore()

    # -- 2. depth + sparsity -------------------------------------------------------------------------------------
    def dropped_blocks(self, seed: int, k: int) -> list[int]:
        from diffusers_layerprune.data import PromptSet
        from diffusers_layerprune.importance import ImportanceScan, LayerImportance, ScanSettings, compute_importance

        if k == 0:
            return []
        path = self.output / f"seed-{seed}" / "preference.json"
        if path.is_file():
            importance = LayerImportance.load(path)
        else:
            self.restore()
            prompts = random.Random(seed).sample(self.train_captions, self.args.score_prompts)
            settings = ScanSettings(**self.gen, batch_size=self.args.batch_size, seed=1000 * seed)
            scan = ImportanceScan(
                self.pipe,
                PromptSet(prompts, "toy:train", meta={"sample_seed": seed, "limit": self.args.score_prompts}),
                settings,
                model_id="toy",
                scorer=self.scorer,
                scorer_name="toy",
            )
            importance = compute_importance("preference", scan)
            importance.save(path)
        return importance.least_important(k)

    def combination_plan(self) -> dict:
        """Per blocks removed d: the magnitude sparsity of the remaining Linear weights that brings the transformer's
        non-zero parameter count to that of 3 blocks removed."""
        from diffusers_layerprune.sparsity import sparsifiable_layers

        tf = self.pipe.transformer
        total = sum(p.numel() for p in tf.parameters())
        blocks = tf.transformer_blocks
        per_block = sum(p.numel() for p in blocks[0].parameters())
        per_block_linear = sum(layer.weight.numel() for layer in sparsifiable_layers(blocks[0], "block").values())
        linear = sum(layer.weight.numel() for layer in sparsifiable_layers(tf, "transformer").values())
        depth = len(blocks)
        target = total - 3 * per_block
        plan = {}
        for d in range(4):
            params, eligible = total - d * per_block, linear - d * per_block_linear
            plan[d] = (params - target) / eligible
        return {"target_nonzero": target, "sparsity": plan, "depth": depth}

    def distil(self, student_dir: Path, out: Path, seed: int) -> float:
        if (out / "model_index.json").is_file():
            return 0.0
        out.mkdir(parents=True, exist_ok=True)
        return distil(
            "toy", student_dir, out, steps=self.args.distill_steps, batch_size=self.args.distill_batch_size,
            learning_rate=self.args.learning_rate, seed=seed, log=out.parent / f"{out.name}.log",
        )  # fmt: skip

    def combination(self) -> dict:
        import copy

        from diffusers_layerprune.modeling import load_pipeline, prune_pipeline, save_pruned_pipeline, with_transformer
        from diffusers_layerprune.sparsity import read_sparsity_record, sparsify_pipeline

        plan = self.combination_plan()
        for seed in self.combo_seeds:
            for d, sparsity in plan["sparsity"].items():
                folder = self.output / f"seed-{seed}" / f"depth-{d}"
                fields = {"depth": d, "sparsity": sparsity, "seed": seed}

                def student(d=d, sparsity=sparsity, seed=seed):
                    self.restore()
                    dropped = self.dropped_blocks(seed, d)
                    if dropped:
                        pipe = prune_pipeline(self.pipe, pruned_layers=dropped)
                    else:
                        pipe = with_transformer(self.pipe, copy.deepcopy(self.pipe.transformer))
                    record = sparsify_pipeline(pipe, "transformer", sparsity=sparsity) if sparsity > 0 else None
                    return pipe, record, dropped

                def measure(pipe, record):
                    tf = pipe.transformer
                    zeros = sum(int((p == 0).sum()) for p in tf.parameters())
                    nonzero = sum(p.numel() for p in tf.parameters()) - zeros
                    achieved = record.components["transformer"].achieved if record else 0.0
                    return {"nonzero": nonzero, "achieved": achieved}

                def before(student=student, measure=measure):
                    pipe, record, dropped = student()
                    return {"dropped": dropped, **measure(pipe, record), **self.evaluate(pipe)}

                self.cell(f"combo_before|depth={d}|seed={seed}", {"stage": "combo_before", **fields}, before)

                def after(student=student, measure=measure, folder=folder, d=d, seed=seed):
                    pipe, record, dropped = student()
                    student_dir = folder / "student"
                    if not (student_dir / "model_index.json").is_file():
                        extra = {"sparsity.json": record.to_json()} if record else None
                        save_pruned_pipeline(pipe, student_dir, overwrite=True, extra_files=extra)
                    seconds = self.distil(student_dir, folder / "distilled", seed)
                    distilled = load_pipeline(folder / "distilled")
                    distilled.set_progress_bar_config(disable=True)
                    saved = read_sparsity_record(folder / "distilled")
                    measured = measure(distilled, saved)
                    zeros_kept = record is None or (
                        saved is not None
                        and saved.components["transformer"].zeros == record.components["transformer"].zeros
                    )
                    result = self.evaluate(distilled)
                    result["seconds"] += seconds
                    return {
                        "dropped": dropped,
                        **measured,
                        "zeros_kept": zeros_kept,
                        "train_seconds": seconds,
                        **result,
                    }

                self.cell(f"combo_after|depth={d}|seed={seed}", {"stage": "combo_after", **fields}, after)

                if d in (1, 2) and seed in self.order_seeds:

                    def distil_first(folder=folder, d=d, sparsity=sparsity, seed=seed, measure=measure):
                        self.restore()
                        dropped = self.dropped_blocks(seed, d)
                        dense_dir = folder / "dense-student"
                        if not (dense_dir / "model_index.json").is_file():
                            save_pruned_pipeline(
                                prune_pipeline(self.pipe, pruned_layers=dropped), dense_dir, overwrite=True
                            )
                        seconds = self.distil(dense_dir, folder / "dense-distilled", seed)
                        pipe = load_pipeline(folder / "dense-distilled")
                        pipe.set_progress_bar_config(disable=True)
                        record = sparsify_pipeline(pipe, "transformer", sparsity=sparsity)
                        result = self.evaluate(pipe)
                        result["seconds"] += seconds
                        return {"dropped": dropped, **measure(pipe, record), "train_seconds": seconds, **result}

                    self.cell(
                        f"combo_distil_then_sparsify|depth={d}|seed={seed}",
                        {"stage": "combo_distil_then_sparsify", **fields},
                        distil_first,
                    )
                if not self.args.keep_models:
                    shutil.rmtree(folder, ignore_errors=True)
        self.restore()
        return plan

    def folder_sizes(self) -> dict:
        import tempfile

        from diffusers_layerprune.modeling import save_pruned_pipeline
        from diffusers_layerprune.sparsity import sparsify_pipeline

        def size(path: Path) -> int:
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

        def gz(path: Path, target: Path) -> int:
            with tarfile.open(target, "w:gz") as tar:
                tar.add(path, arcname=path.name)
            return target.stat().st_size

        with tempfile.TemporaryDirectory(dir=self.output) as tmp:
            tmp = Path(tmp)
            self.restore()
            save_pruned_pipeline(self.pipe, tmp / "dense")
            record = sparsify_pipeline(self.pipe, "both", sparsity=0.5)
            save_pruned_pipeline(self.pipe, tmp / "sparse", extra_files={"sparsity.json": record.to_json()})
            self.restore()
            return {
                "dense_bytes": size(tmp / "dense"),
                "sparse_bytes": size(tmp / "sparse"),
                "dense_gz_bytes": gz(tmp / "dense", tmp / "dense.tar.gz"),
                "sparse_gz_bytes": gz(tmp / "sparse", tmp / "sparse.tar.gz"),
            }

    def params(self) -> dict:
        from diffusers_layerprune.sparsity import sparsifiable_layers

        out = {}
        for name in ("text_encoder", "transformer"):
            module = getattr(self.pipe, name)
            out[name] = sum(p.numel() for p in module.parameters())
            out[f"{name}_sparsifiable"] = sum(x.weight.numel() for x in sparsifiable_layers(module, name).values())
        return out

    def run(self) -> dict:
        import torch

        self.output.mkdir(parents=True, exist_ok=True)
        self.setup()
        with torch.no_grad():
            self.curves()
        combination = self.combination() if self.combo_seeds else None
        sizes = self.folder_sizes()
        cells = [c for c in self.cells.records.values() if c.get("stage") != "score"]
        result = {
            "model": "toy",
            "num_images": len(self.captions),
            "settings": {
                "seeds": self.seeds,
                "combo_seeds": self.combo_seeds,
                "order_seeds": self.order_seeds,
                "calibration_prompts": self.args.calibration_prompts,
                "score_prompts": self.args.score_prompts,
                "eval_seed": self.args.eval_seed,
                "distill_steps": self.args.distill_steps,
                "distill_batch_size": self.args.distill_batch_size,
                "learning_rate": self.args.learning_rate,
                **self.gen,
            },
            "params": self.params(),
            "combination": combination,
            "folder_sizes": sizes,
            "cells": cells,
            "total_minutes": sum(c.get("seconds", 0) for c in cells) / 60,
            "runtime_note": self.args.runtime_note or _load_note(cells),
            "machine": f"{os.cpu_count()}-core CPU",
        }
        return result
