"""Depth x cache x weights (x steps) on the bundled toy world: does depth pruning stack with diffusers' cache hooks
and int8 weights?

A small measurement (the machine is a 2-core CPU shared by several jobs), with these limits, all stated in the page
it writes:

- model: ``--model toy`` (PixArt toy) or ``--model toy-flux`` (the toy Flux); one result file each;
- depth: the teacher and, at 25% and 40% of the blocks removed, the selection whose distilled students were best in
  the paper grid (``reproduce_paper.json``'s distilled table for ``toy``: ``learnable``; ``reproduce_paper_flux.json``'s
  distilled stack plans for ``toy-flux``), the seed-0 plan, distilled 400 steps with reproduce_paper.py's recipe
  (``--distilled``; students kept under ``--work`` and reused; without it the pruned models are judged undistilled);
- cache: none, FirstBlockCache (threshold ``--fbc-threshold``), TaylorSeer (interval 2 from step 2), MagCache
  (diffusers' defaults: threshold 0.06, at most 3 skipped steps in a row, no skip in the first 20% of steps) with
  magnitude ratios calibrated per model (``MagCacheConfig(calibrate=True)`` on ``--calib-prompts`` *training*
  captions, never the held-out ones; the int8 cells reuse their float model's ratios); ``--mag-extra`` adds MagCache
  at other thresholds (float weights, cells named ``magcache@T``);
- weights: float32 and int8 weight-only (optimum-quanto, in memory); GGUF Q8_0 is checked with ``layerprune
  export``'s own check: both toys are refused (PixArt: no single-file loader; toy-flux: 64 wide, diffusers' Flux
  converter reads 3072 only), the refusal is recorded and shown; a model it accepts stops the script (no GGUF cells
  are implemented);
- steps (``--steps-axis N``): the uncached float32 models also at N denoising steps;
- ``--eval-prompts`` held-out captions x ``--seeds-per-caption`` noise seeds (seed ``s`` of caption ``i`` is
  ``eval-seed + 1000 s + i``, reproduce_paper.py's seeds); accuracy intervals are Wilson intervals over all images,
  points lost a paired interval over captions (each caption's seeds averaged, then a normal interval of the mean
  difference to the teacher on the same captions and seeds).

Per cell: the judge's all-four-right accuracy, transformer FLOPs per image counted with
``torch.utils.flop_counter.FlopCounterMode`` around every transformer call (int8 cells: the float cell's count, the
counter does not see quanto's kernels; the arithmetic is the same), latency as the process's CPU time per image
against the teacher's uncached float32 cell, from a separate pass of ``--timing`` images without the FLOP counter
(CPU time, not wall time: the cores are shared), and the cell's CPU seconds. Finished cells are kept one file each in
``--work/<model>/cells/`` (a killed or split run resumes; ``--depths`` / ``--caches`` split a run over parallel
commands); a retrained teacher is refused there (``teacher.sha256``). Writes the model's result JSON,
docs/stacking.png and the generated section of docs/stacking.md (every model whose JSON exists).

    python benchmarks/stack_toy.py --distilled --steps-axis 10 --mag-extra 0.02,0.01   # PixArt toy, ~12 CPU-minutes
    python benchmarks/stack_toy.py --model toy-flux --distilled --steps-axis 10 --mag-extra 0.02,0.01
    python benchmarks/stack_toy.py --distilled --depths 40%       # split runs (parallel commands): cells only
    python benchmarks/stack_toy.py --report-only                    # page and plot from the JSONs
    python benchmarks/stack_toy.py --smoke --results-dir /tmp/s --docs-dir /tmp/s   # ~1 CPU-minute: 2 images, 4 steps
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning waits stall on shared cores
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]
from paper.cells import replace_section  # noqa: E402
from toybench import wilson, write_json  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- stack_toy: begin -->", "<!-- stack_toy: end -->"
# model -> (result file, the paper grid's result the depth plans come from, page title)
MODELS = {
    "toy": ("stack_toy.json", "reproduce_paper.json", "PixArt toy (`toy`)"),
    "toy-flux": ("stack_toy_flux.json", "reproduce_paper_flux.json", "Flux toy (`toy-flux`)"),
}
RATIOS = {"25%": "0.25", "40%": "0.40"}
CACHES = ("none", "first_block", "taylorseer", "magcache")
WEIGHTS = ("fp32", "int8", "gguf_q8_0")
GOAL_FLOPS, GOAL_POINTS = 3.0, 2.0  # the goal: 3x fewer transformer FLOPs within 2 points of the teacher


# -- which blocks each depth removes ---------------------------------------------------------------------------------


def best_plans(paper: dict) -> dict[str, dict]:
    """``{depth: {"dropped": [...], "selection": name, "paper_distilled": accuracy}}`` for the teacher and each ratio
    of :data:`RATIOS`: the selection with the best distilled mean accuracy in the paper grid ``paper`` (PixArt's
    criteria grid, or the Flux page's stack plans), its seed-0 plan."""
    out = {"full": {"dropped": [], "selection": "teacher", "paper_distilled": None}}
    for depth, ratio in RATIOS.items():
        options = []  # (mean distilled accuracy, selection name, seed-0 plan)
        if "plans" in paper:  # reproduce_paper.json: table.distilled[ratio][criterion], plans[criterion][ratio][seed]
            for name, cell in paper["table"]["distilled"][ratio].items():
                options.append((cell["overall"]["mean"], name, paper["plans"][name][ratio]["0"]))
        else:  # reproduce_paper_flux.json: table[ratio][criterion][stack plan] with its distilled judge
            for criterion, by_plan in paper["table"][ratio].items():
                for plan, cell in by_plan.items():
                    if cell.get("distilled"):
                        options.append(
                            (cell["distilled"]["overall"]["mean"], f"{criterion}, {plan}", cell["dropped"]["0"])
                        )
        if not options:
            raise SystemExit(f"the paper grid has no distilled model at {depth}; run reproduce_paper.py first")
        accuracy, name, dropped = max(options, key=lambda o: o[0])  # first listed on ties (max keeps the first)
        out[depth] = {"dropped": sorted(dropped), "selection": name, "paper_distilled": accuracy}
    return out


# -- measuring ----------------------------------------------------------------------------------------------------


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
    if len(handler.runs) != 1 or len(handler.runs[0]) != gen["num_inference_steps"]:
        raise RuntimeError(f"MagCache calibration gave {handler.runs}: expected one run of ratios")
    return handler.runs[0]


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


def paired_points_lost(teacher: str, cell: str, n_captions: int) -> tuple[float, tuple[float, float]]:
    """Points lost against the teacher on the same images (``"0101.."`` verdict strings, image j of caption
    j % n_captions) and its 95% interval over captions: each caption's seeds averaged, then mean +- 1.96 SE."""
    diffs = [0.0] * n_captions
    counts = [0] * n_captions
    for j, (t, c) in enumerate(zip(teacher, cell, strict=True)):
        diffs[j % n_captions] += (t == "1") - (c == "1")
        counts[j % n_captions] += 1
    per_caption = [d / c for d, c in zip(diffs, counts, strict=True) if c]
    n = len(per_caption)
    mean = sum(per_caption) / n
    var = sum((x - mean) ** 2 for x in per_caption) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return 100 * mean, (100 * (mean - half), 100 * (mean + half))


def derive(cells: list[dict], n_captions: int, steps: int) -> None:
    """Add the teacher-relative columns to ``cells`` in place."""
    by = {(c["depth"], c["cache"], c["weights"], c["steps"]): c for c in cells}
    teacher = by["full", "none", "fp32", steps]
    for c in cells:
        if c["weights"] != "fp32":  # the counter does not see quanto's kernels: the float cell's count
            c["flops_counted"] = c["flops_per_image"]
            c["flops_per_image"] = by[c["depth"], c["cache"], "fp32", c["steps"]]["flops_per_image"]
        c["flops_saving"] = teacher["flops_per_image"] / c["flops_per_image"]
        if c.get("cpu_seconds_per_image") and teacher.get("cpu_seconds_per_image"):
            c["latency_ratio"] = c["cpu_seconds_per_image"] / teacher["cpu_seconds_per_image"]
        else:
            c["latency_ratio"] = c["seconds_per_image"] / teacher["seconds_per_image"]
        c["points_lost"], c["points_lost_ci95"] = paired_points_lost(teacher["correct"], c["correct"], n_captions)
        c["cache_work_fraction"] = (
            by[c["depth"], c["cache"], "fp32", c["steps"]]["flops_per_image"]
            / by[c["depth"], "none", "fp32", c["steps"]]["flops_per_image"]
        )


# -- the page ------------------------------------------------------------------------------------------------------


def teacher_of(result: dict) -> dict:
    steps = result["settings"]["num_inference_steps"]
    return next(
        c
        for c in result["cells"]
        if (c["depth"], c["cache"], c["weights"], c["steps"]) == ("full", "none", "fp32", steps)
    )


def verdict(result: dict) -> list[str]:
    """The generated verdict lines of one model's result."""
    cells = result["cells"]
    teacher = teacher_of(result)
    steps = teacher["steps"]
    within = [c for c in cells if c["points_lost"] <= GOAL_POINTS]
    best = max(within, key=lambda c: c["flops_saving"])
    lo, hi = best["points_lost_ci95"]
    lines = [
        f"- Teacher: {100 * teacher['accuracy']:.1f}% all four right ({teacher['images']} images), "
        f"{teacher['flops_per_image'] / 1e9:.3f} GFLOP per image (transformer).",
        f"- Largest FLOP saving within {GOAL_POINTS:.0f} points of the teacher: {best['flops_saving']:.2f}x "
        f"({name(best)}; {100 * best['accuracy']:.1f}%, {best['points_lost']:+.1f} points, 95% interval "
        f"{lo:+.1f} to {hi:+.1f}). The goal ({GOAL_FLOPS:.0f}x within {GOAL_POINTS:.0f} points) is "
        + ("met." if best["flops_saving"] >= GOAL_FLOPS else "**not met**.")
        + f" {reach(cells)}",
        f"- Most saving per point lost (cells losing more than {GOAL_POINTS:.0f} points, by FLOP saving minus 1 per "
        f"point): {per_point(cells)}.",
    ]
    gains = []
    for cache in caches_of(cells)[1:]:
        full = by_key(cells, "full", cache, "fp32", steps)
        if full is None:
            continue
        pruned = [by_key(cells, d, cache, "fp32", steps) for d in result["plans"] if d != "full"]
        gains.append(
            f"{cache} keeps {100 * full['cache_work_fraction']:.0f}% of the full model's work"
            + "".join(f", {100 * p['cache_work_fraction']:.0f}% of the {p['depth']}-pruned one's" for p in pruned if p)
        )
    lines.append(
        "- Do depth and caching add up? The FLOP savings multiply when a cache keeps the same share of the work "
        "after pruning: " + "; ".join(gains) + "."
    )
    losses = []
    for depth in (d for d in result["plans"] if d != "full"):
        pruned = by_key(cells, depth, "none", "fp32", steps)
        for cache in caches_of(cells)[1:]:
            cached, both = by_key(cells, "full", cache, "fp32", steps), by_key(cells, depth, cache, "fp32", steps)
            if pruned and cached and both:
                losses.append(
                    f"{depth} + {cache}: {both['points_lost']:+.1f} measured, "
                    f"{pruned['points_lost'] + cached['points_lost']:+.1f} if the losses added"
                )
    if losses:
        lines.append("- Points lost by depth and cache together (float32): " + "; ".join(losses) + ".")
    return lines


def caches_of(cells: list[dict]) -> list[str]:
    """The caches measured, in :data:`CACHES` order, then any MagCache variant (``magcache@T``)."""
    seen = list(dict.fromkeys(c["cache"] for c in cells))
    return [c for c in CACHES if c in seen] + [c for c in seen if c not in CACHES]


def by_key(cells, depth, cache, weights, steps):
    return next(
        (c for c in cells if (c["depth"], c["cache"], c["weights"], c["steps"]) == (depth, cache, weights, steps)),
        None,
    )


def name(cell: dict) -> str:
    return f"{cell['depth']}, {cell['cache']}, {cell['weights']}, {cell['steps']} steps"


def reach(cells: list[dict]) -> str:
    """The most accurate cell at or beyond the goal's FLOP saving, or the largest saving measured."""
    far = [c for c in cells if c["flops_saving"] >= GOAL_FLOPS]
    if not far:
        top = max(cells, key=lambda c: c["flops_saving"])
        return f"No cell reaches {GOAL_FLOPS:.0f}x; the largest saving is {top['flops_saving']:.2f}x ({name(top)})."
    best = max(far, key=lambda c: c["accuracy"])
    return (
        f"The best cell at {GOAL_FLOPS:.0f}x or more ({name(best)}, {best['flops_saving']:.2f}x) loses "
        f"{best['points_lost']:.1f} points."
    )


def per_point(cells: list[dict]) -> str:
    lossy = [c for c in cells if c["points_lost"] > GOAL_POINTS and c["flops_saving"] > 1]
    if not lossy:
        return "none"
    ranked = sorted(lossy, key=lambda c: -(c["flops_saving"] - 1) / c["points_lost"])[:3]
    return "; ".join(
        f"{name(c)}: {c['flops_saving']:.2f}x for {c['points_lost']:.1f} points "
        f"({100 * (c['flops_saving'] - 1) / c['points_lost']:.0f}% saving per point)"
        for c in ranked
    )


def distillation(result: dict) -> str:
    """How the pruned models of ``result`` were made, for the page."""
    steps = result["settings"].get("distill_steps")
    plans = result["plans"]
    chosen = ", ".join(f"{d}: {p['selection']} (drops {p['dropped']})" for d, p in plans.items() if p["dropped"])
    if result["settings"].get("distilled"):
        return f"pruned models distilled {steps} steps as in reproduce_paper.py; selections {chosen}"
    return f"pruned models **not distilled**; selections {chosen}"


def render_model(result: dict) -> list[str]:
    rows = [
        "| depth | blocks | cache | weights | steps | all four right (95% CI) | points lost (95% CI) | GFLOP / image | "
        "FLOP saving | cache keeps work | latency vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        low, high = c["ci95"]
        plo, phi = c["points_lost_ci95"]
        rows.append(
            f"| {c['depth']} | {c['blocks']} | {c['cache']} | {c['weights']} | {c['steps']} | "
            f"{100 * c['accuracy']:.1f}% ({100 * low:.0f}-{100 * high:.0f}) | {c['points_lost']:+.1f} "
            f"({plo:+.1f} to {phi:+.1f}) | {c['flops_per_image'] / 1e9:.3f} | {c['flops_saving']:.2f}x | "
            f"{100 * c['cache_work_fraction']:.0f}% | {c['latency_ratio']:.2f} |"
        )
    s = result["settings"]
    title = MODELS[result["model"]][2]
    gguf = result.get("gguf") or {}
    ratios = "; ".join(f"{d}: {' '.join(f'{r:.2f}' for r in v)}" for d, v in (result.get("mag_ratios") or {}).items())
    return [
        f"### {title}",
        "",
        f"{result['captions']} held-out captions x {result['seeds_per_caption']} noise seeds "
        f"({result['captions'] * result['seeds_per_caption']} images per cell), {s['num_inference_steps']} steps, "
        f"guidance {s['guidance_scale']}, {result['machine']}; {distillation(result)}. "
        f"FirstBlockCache threshold {s['fbc_threshold']}; TaylorSeer interval 2 from step 2; MagCache threshold "
        f"{s['mag_threshold']} (`magcache@T`: threshold T; at most 3 skips in a row, none in the first 20% of "
        "steps), ratios calibrated on "
        f"{s['calib_prompts']} training captions per model (int8 cells use the float model's ratios). "
        f"Measured in {result['cpu_minutes']:.0f} CPU-minutes (cells only).",
        "",
        *rows,
        "",
        "- GGUF Q8_0: "
        + (
            "measured."
            if gguf.get("available")
            else f"N/A, `layerprune export` refuses the model: {gguf.get('reason', 'not checked')}"
        ),
        f"- MagCache ratios (step 0..{s['num_inference_steps'] - 1}): {ratios}.",
        *verdict(result),
        "",
    ]


def render(results: list[dict]) -> str:
    return "\n".join(
        [
            BEGIN,
            "",
            "FLOPs counted with `torch.utils.flop_counter` around every transformer call (int8 rows: the float count). "
            "Points lost: the teacher's accuracy minus the cell's on the same images, with a 95% interval over "
            "captions (paired). Latency: the process's CPU time per image against the float32 teacher's, one "
            "thread, in a separate pass without the FLOP counter (`--timing` images in one batch: generation and "
            "VAE decoding, not text encoding); CPU time rather than wall time because the 2 cores are shared and "
            "the load changed during the run (without a timing pass: wall time, rough).",
            "",
            *[line for result in results for line in render_model(result)],
            "![accuracy against transformer FLOPs](stacking.png)",
            "",
            END,
        ]
    )


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    markers = {"none": "o", "first_block": "s", "taylorseer": "^", "magcache": "D"}
    colours = {"full": "tab:blue", "25%": "tab:orange", "40%": "tab:red"}
    for ax, result in zip(axes[0], results, strict=True):
        default = result["settings"]["num_inference_steps"]
        teacher = teacher_of(result)
        variants = sorted({c["cache"] for c in result["cells"] if c["cache"] not in markers}, reverse=True)
        extra = dict(zip(variants, "dphv<>", strict=False))  # MagCache variants: one marker each
        for c in result["cells"]:
            marker = markers.get(c["cache"], extra.get(c["cache"])) if c["steps"] == default else "*"
            ax.scatter(
                c["flops_saving"],
                100 * c["accuracy"],
                marker=marker,
                color=colours[c["depth"]],
                facecolors="none" if c["weights"] != "fp32" else colours[c["depth"]],
                s=70 if marker == "*" else 45,
            )
        ax.axhspan(100 * teacher["accuracy"] - GOAL_POINTS, 100 * teacher["accuracy"], color="green", alpha=0.08)
        ax.axvline(GOAL_FLOPS, color="green", linestyle=":", linewidth=1)
        for depth, colour in colours.items():
            ax.scatter([], [], color=colour, label=f"depth {depth}")
        for cache, marker in markers.items():
            ax.scatter([], [], marker=marker, color="grey", label=f"cache {cache}")
        for cache, marker in extra.items():
            ax.scatter([], [], marker=marker, color="grey", label=f"cache {cache}")
        if any(c["steps"] != default for c in result["cells"]):
            ax.scatter([], [], marker="*", color="grey", label="fewer steps, no cache")
        ax.scatter([], [], facecolors="none", edgecolors="grey", label="int8 (hollow)")
        ax.set_xlabel("transformer FLOP saving vs teacher (x); goal: right of the dotted line")
        ax.set_ylabel("judge: all four right (%); band: within 2 points")
        ax.set_title(f"{MODELS[result['model']][2].split(' (')[0]}: depth x cache x weights")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="toy", help="toy: PixArt toy; toy-flux: Flux toy")
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--seeds-per-caption", type=int, default=3)
    parser.add_argument("--eval-seed", type=int, default=100000)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    parser.add_argument("--steps-axis", type=int, default=None, help="also the uncached float models at N steps")
    parser.add_argument("--fbc-threshold", type=float, default=0.05)
    parser.add_argument("--mag-threshold", type=float, default=0.06)
    parser.add_argument(
        "--mag-extra", type=lambda t: [float(x) for x in t.split(",")], default=None,
        help="also MagCache at these thresholds (float weights), e.g. 0.02",
    )  # fmt: skip
    parser.add_argument("--calib-prompts", type=int, default=16, help="training captions MagCache is calibrated on")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--timing", type=int, default=24, help="images per cell of the CPU-time pass (0: none)")
    parser.add_argument("--caches", default=None, help="split runs: compute only these caches' cells, write nothing")
    parser.add_argument(
        "--depths", default=None, help="split runs: compute only these depths' cells (full,25%%,40%%), write nothing"
    )
    parser.add_argument(
        "--distilled", action="store_true", help="distil the 25%%/40%% students first (reproduce_paper.py's recipe)"
    )
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--work", default="runs/stack_toy", help="distilled students and finished cells (reused)")
    parser.add_argument("--smoke", action="store_true", help="2 captions, 1 seed, 2 steps, undistilled, nothing kept")
    parser.add_argument("--results-dir", default=str(RESULTS), help="where the result JSONs are read and written")
    parser.add_argument("--docs-dir", default=str(ROOT / "docs"), help="where stacking.md / stacking.png are")
    args = parser.parse_args(argv)
    if args.smoke:
        args.eval_prompts, args.seeds_per_caption, args.steps, args.calib_prompts = 2, 1, 4, 2
        args.distilled, args.steps_axis = False, 2
    results_dir, docs_dir = Path(args.results_dir), Path(args.docs_dir)
    if not args.report_only:
        result = run(args)
        if result is None:  # a split run (--depths, --caches)
            return
        write_json(results_dir / MODELS[args.model][0], result)
    results = [
        json.loads((results_dir / name).read_text()) for name, _, _ in MODELS.values() if (results_dir / name).is_file()
    ]
    results = [r for r in results if r.get("model")]  # a result of the first version has no model: run it again
    plot(results, docs_dir / "stacking.png")
    replace_section(docs_dir / "stacking.md", BEGIN, END, render(results))
    for result in results:
        print(MODELS[result["model"]][2])
        print("\n".join(verdict(result)))


if __name__ == "__main__":
    main()
