"""Measuring the stacking study's cells: each depth's model (distilled with reproduce_paper.py's recipe when asked),
diffusers' cache hooks, int8 weights, a FLOP counter and a CPU-time pass. Finished cells are kept one file each, so
a killed or split run resumes."""

from __future__ import annotations

import ast
import copy
import json
import logging
import os
import time
from pathlib import Path

from toybench import wilson, write_json

from .claims import CACHES, MODELS, WEIGHTS, best_plans, derive

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


class FlopMeter:
    """Counts FLOPs of every call of ``module`` (hooks enter / leave a ``FlopCounterMode``)."""

    def __init__(self, module):
        from torch.utils.flop_counter import FlopCounterMode

        self.total = 0
        self._mode = None
        self._cls = FlopCounterMode

        def enter(*_):
            self._mode = self._cls(display=False)
            self._mode.__enter__()

        def leave(*_):
            self._mode.__exit__(None, None, None)
            self.total += self._mode.get_total_flops()

        self.handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def apply_cache(transformer, cache: str, args, steps: int, mag_ratios=None) -> None:
    """Put diffusers' ``cache`` hook on ``transformer`` (``none``: nothing)."""
    import torch
    from diffusers.hooks import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        TaylorSeerCacheConfig,
        apply_first_block_cache,
        apply_mag_cache,
        apply_taylorseer_cache,
    )

    if cache == "first_block":
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=args.fbc_threshold))
    elif cache == "taylorseer":
        apply_taylorseer_cache(
            transformer,
            TaylorSeerCacheConfig(
                cache_interval=2,
                disable_cache_before_step=2,
                taylor_factors_dtype=torch.float32,
                # PixArt's attn1 / attn2 and Flux's attn (docs/stacking.md: the defaults miss PixArt's)
                cache_identifiers=[r"(single_)?transformer_blocks\.\d+\.attn\d?"],
            ),
        )
    elif cache.startswith("magcache"):  # "magcache" at --mag-threshold, "magcache@T" at threshold T
        config = MagCacheConfig(
            threshold=float(cache.split("@")[1]) if "@" in cache else args.mag_threshold,
            num_inference_steps=steps,
            mag_ratios=mag_ratios,
            calibrate=mag_ratios is None,
        )
        apply_mag_cache(transformer, config)
    elif cache != "none":
        raise ValueError(cache)


def fresh_cache_state(transformer) -> None:
    """Reset the cache hooks' state and name the cache context (``cond``) for the next batch: only CacheMixin
    pipelines (Flux) reset after each call, and a PixArt batch would otherwise start from the last batch's cached
    residuals. Resetting clears the context, so it is set again."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    if hasattr(transformer, "_diffusers_hook"):
        HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)
    _set_cache_context(transformer, CacheContext("cond"))


def generate(pipe, text, negative, seeds, gen: dict, batch_size: int):
    """Images of ``text`` (one row per image), every batch from a fresh cache state (the ``cond`` context: PixArt's
    classifier-free guidance runs both halves in one batch, docs/stacking.md)."""
    import torch
    from diffusers.hooks.hooks import _set_cache_context

    from diffusers_layerprune.generation import generate_from_conditioning

    fresh_cache_state(pipe.transformer)
    try:
        with torch.no_grad():
            return generate_from_conditioning(
                pipe, text, negative, seeds=seeds, batch_size=batch_size,
                progress=lambda n: fresh_cache_state(pipe.transformer), **gen,
            )  # fmt: skip
    finally:
        _set_cache_context(pipe.transformer, None)


class _Ratios(logging.Handler):
    """Catches the ratios diffusers' MagCache logs at the end of a calibration run."""

    PREFIX = "MagCache Calibration Results: "

    def __init__(self):
        super().__init__(logging.INFO)
        self.runs: list[list[float]] = []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.runs.append([float(x) for x in ast.literal_eval(message[len(self.PREFIX) :])])


def calibrate_mag_ratios(pipe, text, negative, seeds, gen: dict, args) -> list[float]:
    """MagCache's magnitude ratios of ``pipe.transformer``: diffusers' calibration mode (nothing skipped) on ``text``
    (training captions) in one batch; the ratio of step t is the mean over tokens of |residual_t| / |residual_t-1|
    (residual: last block's output minus first block's input), 1.0 at step 0."""
    logger = logging.getLogger("diffusers.hooks.mag_cache")
    handler, level = _Ratios(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        transformer = copy.deepcopy(pipe.transformer)
        apply_cache(transformer, "magcache", args, gen["num_inference_steps"])
        from diffusers_layerprune.modeling import with_transformer

        calibrating = with_transformer(pipe, transformer)
        calibrating.set_progress_bar_config(disable=True)
        generate(calibrating, text, negative, seeds, gen, batch_size=len(seeds))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    # one run per cache context: one, or two where the pipeline runs true CFG (FluxPipeline's "cond" and "uncond"
    # contexts share the config's ratios, so they get the mean of the two)
    steps = gen["num_inference_steps"]
    if len(handler.runs) not in (1, 2) or any(len(run) != steps for run in handler.runs):
        raise RuntimeError(f"MagCache calibration gave {handler.runs}: expected one run of ratios per context")
    return [sum(values) / len(values) for values in zip(*handler.runs, strict=True)]


def gguf_status(folder: Path) -> dict:
    """Whether ``layerprune export --format gguf`` accepts the model in ``folder``: ``{"available": bool, "reason"}``."""
    from diffusers_layerprune.errors import LayerPruneError
    from diffusers_layerprune.export import check_exportable
    from diffusers_layerprune.modeling import read_transformer_config

    try:
        check_exportable(read_transformer_config(folder), folder.name)
    except LayerPruneError as error:
        return {"available": False, "reason": str(error)}
    return {"available": True, "reason": ""}


class CellStore:
    """Finished cells, one JSON file per key under ``folder`` (runs split over parallel commands never overwrite each
    other's cells); ``folder=None`` keeps them in memory only (smoke runs)."""

    def __init__(self, folder: Path | None):
        self.folder, self.memory = folder, {}

    def _path(self, key: str) -> Path:
        import hashlib

        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def __contains__(self, key: str) -> bool:
        return key in self.memory or (self.folder is not None and self._path(key).is_file())

    def __getitem__(self, key: str):
        if key not in self.memory:
            self.memory[key] = json.loads(self._path(key).read_text())["value"]
        return self.memory[key]

    def __setitem__(self, key: str, value) -> None:
        self.memory[key] = value
        if self.folder is not None:
            write_json(self._path(key), {"key": key, "value": value})


def check_teacher(work: Path, folder: Path) -> None:
    """Refuse to reuse ``work``'s students and cells when the shipped teacher changed since they were made (a
    retrained toy): they would mix two teachers. The teacher's digest is kept in ``work/teacher.sha256``."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((folder / "transformer").glob("*.safetensors")):
        digest.update(path.read_bytes())
    mark = work / "teacher.sha256"
    if mark.is_file() and mark.read_text().strip() != digest.hexdigest():
        raise SystemExit(f"the teacher in {folder} changed since {work} was made: remove {work} or pass another --work")
    work.mkdir(parents=True, exist_ok=True)
    mark.write_text(digest.hexdigest() + "\n")


def cell_key(model: str, depth: str, plan: dict, distilled: bool, cache: str, weights: str, steps: int, args) -> str:
    """What a cell's numbers depend on (a stored cell is reused only when all of it matches)."""
    parts = [model, depth, "-".join(map(str, plan["dropped"])), "distilled" if distilled else "pruned", cache, weights,
             f"steps{steps}", f"n{args.eval_prompts}x{args.seeds_per_caption}", f"seed{args.eval_seed}"]  # fmt: skip
    if cache == "first_block":
        parts.append(f"t{args.fbc_threshold}")
    if cache.startswith("magcache"):
        parts.append(f"t{args.mag_threshold}-c{args.calib_prompts}")
    return "|".join(parts)


def run(args) -> dict:
    import torch
    from optimum.quanto import freeze, qint8, quantize

    from diffusers_layerprune.aliases import ALIAS_FOLDERS
    from diffusers_layerprune.blocks import num_blocks
    from diffusers_layerprune.families import family_of_pipeline
    from diffusers_layerprune.modeling import (
        generation_defaults,
        load_pipeline,
        load_transformer,
        prune_pipeline,
        save_pruned_pipeline,
        with_transformer,
    )
    from diffusers_layerprune.toy import world
    from diffusers_layerprune.toy.judge import judge

    torch.set_num_threads(args.threads)
    result_name, paper_name, _ = MODELS[args.model]
    plans = best_plans(json.loads((RESULTS / paper_name).read_text()))
    if args.smoke:  # the code path in seconds: teacher and one undistilled depth
        plans = {"full": plans["full"], "25%": plans["25%"]}
    if args.depths:  # a split run: compute and keep these depths' cells only (the result needs every cell)
        plans = {d: p for d, p in plans.items() if d in args.depths.split(",")}
    base = load_pipeline(args.model)
    base.set_progress_bar_config(disable=True)
    family = family_of_pipeline(base)
    depth_total = num_blocks(base.transformer)
    defaults = generation_defaults(args.model, base)
    gen = {k: defaults[k] for k in ("num_inference_steps", "guidance_scale", "resolution", "max_sequence_length")}
    if args.steps:
        gen["num_inference_steps"] = args.steps

    def encode(prompts):
        return family.encode(base, list(prompts), gen["max_sequence_length"], base.device)

    captions = world.captions("heldout")[: args.eval_prompts]
    k = args.seeds_per_caption
    all_captions = captions * k  # image j: caption j % n, seed eval_seed + 1000 (j // n) + j % n
    seeds = [args.eval_seed + 1000 * s + i for s in range(k) for i in range(len(captions))]
    with torch.no_grad():
        one = encode(captions)
        text = {key: value.repeat(k, *([1] * (value.dim() - 1))) for key, value in one.items()}
        negative = encode([""])
        calib_captions = world.captions("train")[: args.calib_prompts]
        calib_text = encode(calib_captions)
    calib_seeds = [args.eval_seed + 500 + i for i in range(len(calib_captions))]

    work = Path(args.work) / args.model
    store = CellStore(None if args.smoke else work / "cells")
    if not args.smoke:
        check_teacher(work, Path(ALIAS_FOLDERS[args.model]()))
    transformers = {}  # depth -> the float transformer of that depth (distilled student, pruned model or teacher)
    distilled = {}
    for depth, plan in plans.items():
        dropped = plan["dropped"]
        if not dropped:
            transformers[depth], distilled[depth] = base.transformer, False
            continue
        folder = work / f"drop-{'-'.join(map(str, dropped))}"
        pruned, final = folder / "pruned", folder / "distilled"
        if args.distilled:
            if not (final / "model_index.json").is_file():
                from paper.distil import distil

                if not (pruned / "model_index.json").is_file():
                    save_pruned_pipeline(prune_pipeline(base, pruned_layers=dropped), pruned, overwrite=True)
                # reproduce_paper.py's distillation: seed 0, batch 16, lr 2e-4, cosine (reused when finished)
                seconds = distil(
                    args.model, pruned, final, steps=args.distill_steps, batch_size=16, learning_rate=2e-4, seed=0,
                    log=folder / "train.log",
                )  # fmt: skip
                print(f"distilled the {depth} student in {seconds:.0f} s", flush=True)
            transformers[depth], distilled[depth] = load_transformer(str(final)), True
        else:
            transformers[depth], distilled[depth] = prune_pipeline(base, pruned_layers=dropped).transformer, False
    gguf = gguf_status(Path(ALIAS_FOLDERS[args.model]()))
    weights_axis = [w for w in WEIGHTS if w != "gguf_q8_0" or gguf["available"]]
    if gguf["available"]:  # not reached on the toys (export refuses them); the rows need the export + load path
        raise SystemExit("GGUF export accepts this model: add the gguf_q8_0 cells (export, from_single_file) first")

    mag_ratios = {}
    for depth, transformer in transformers.items():
        key = f"{args.model}|{depth}|mag_ratios|{'distilled' if distilled[depth] else 'pruned'}|c{args.calib_prompts}"
        key += f"|steps{gen['num_inference_steps']}"
        if key not in store:
            calib_gen = dict(gen)
            store[key] = calibrate_mag_ratios(
                with_transformer(base, transformer), calib_text, negative, calib_seeds, calib_gen, args
            )
        mag_ratios[depth] = store[key]
        print(f"{depth} MagCache ratios: {' '.join(f'{r:.3f}' for r in mag_ratios[depth])}", flush=True)

    grid = [(d, c, w, gen["num_inference_steps"]) for d in plans for w in weights_axis for c in CACHES]
    for threshold in args.mag_extra or []:  # gentler (or harsher) MagCache settings, float weights only
        grid += [(d, f"magcache@{threshold:g}", "fp32", gen["num_inference_steps"]) for d in plans]
    if args.steps_axis:
        grid += [(d, "none", "fp32", args.steps_axis) for d in plans]
    if args.caches:  # a split run: only these caches' cells
        grid = [cell for cell in grid if cell[1] in args.caches.split(",")]

    def build(depth: str, cache: str, weights: str, steps: int):
        """A pipeline of the cell: a fresh transformer (hooks and quantization stay on it), the other parts shared."""
        transformer = copy.deepcopy(transformers[depth])
        if weights == "int8":
            quantize(transformer, weights=qint8)
            freeze(transformer)
        apply_cache(transformer, cache, args, steps, mag_ratios[depth] if cache.startswith("magcache") else None)
        pipe = with_transformer(base, transformer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    cells = []
    for depth, cache, weights, steps in grid:
        plan = plans[depth]
        key = cell_key(args.model, depth, plan, distilled[depth], cache, weights, steps, args)
        if key not in store:
            pipe = build(depth, cache, weights, steps)
            transformer = pipe.transformer
            meter = FlopMeter(transformer)
            start, cpu = time.perf_counter(), time.process_time()
            images = generate(pipe, text, negative, seeds, {**gen, "num_inference_steps": steps}, args.batch_size)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            meter.remove()
            correct = [bool(x) for x in judge(images, all_captions).correct["overall"]]
            store[key] = dict(
                correct="".join("1" if x else "0" for x in correct),
                flops_per_image=meter.total / len(seeds),
                seconds_per_image=seconds / len(seeds),
                cpu_seconds=cpu,
            )
        record = store[key]
        correct = [c == "1" for c in record["correct"]]
        timing = None
        if args.timing:  # CPU time per image without the FLOP counter: less sensitive to the shared CPU's load
            tkey = f"{key}|timing{args.timing}"
            if tkey not in store:
                pipe = build(depth, cache, weights, steps)
                n = min(args.timing, len(seeds))
                rows = {name: value[:n] for name, value in text.items()}
                cpu = time.process_time()
                generate(pipe, rows, negative, seeds[:n], {**gen, "num_inference_steps": steps}, n)
                store[tkey] = (time.process_time() - cpu) / n
            timing = store[tkey]
        cell = dict(
            depth=depth,
            dropped=plan["dropped"],
            blocks=depth_total - len(plan["dropped"]),
            selection=plan["selection"],
            distilled=distilled[depth],
            cache=cache,
            weights=weights,
            steps=steps,
            images=len(correct),
            accuracy=sum(correct) / len(correct),
            ci95=wilson(sum(correct), len(correct)),
            correct=record["correct"],
            flops_per_image=record["flops_per_image"],
            seconds_per_image=record["seconds_per_image"],
            cpu_seconds=record["cpu_seconds"],
            cpu_seconds_per_image=timing,
        )
        cells.append(cell)
        print(
            f"{depth:>4} {weights:>4} {cache:>11} {steps:>2} steps: {100 * cell['accuracy']:.1f}% "
            f"{cell['flops_per_image'] / 1e9:.3f} GFLOP/img {cell['seconds_per_image'] * 1e3:.0f} ms/img",
            flush=True,
        )
    if args.depths or args.caches:
        print(f"cells kept in {work / 'cells'}; run again without --depths / --caches for the result")
        return None
    derive(cells, len(captions), gen["num_inference_steps"])
    return dict(
        model=args.model,
        settings=dict(
            {k: v for k, v in vars(args).items() if k not in ("report_only", "work", "results_dir", "docs_dir")},
            **gen,
        ),
        captions=len(captions),
        seeds_per_caption=k,
        machine=f"{os.cpu_count()}-core CPU (shared)",
        plans=plans,
        mag_ratios=mag_ratios,
        gguf=gguf,
        cells=cells,
        cpu_minutes=sum(c["cpu_seconds"] for c in cells) / 60,
    )
