"""The whole recipe in one call: score -> prune -> distill -> eval -> model card (-> push).

Each stage is a library function (:func:`~diffusers_layerprune.importance.score_blocks`,
:func:`~diffusers_layerprune.modeling.prune_to_folder`, :func:`~diffusers_layerprune.distill.distill_student`,
:func:`~diffusers_layerprune.evaluation.evaluate_pipeline`, :func:`~diffusers_layerprune.hub.push_pipeline`); the
recipe calls them with typed settings and reads their typed results. Distillation (and, with several processes, the
scan) runs under ``accelerate launch``, as users run it. Each stage writes into the run folder and records its
settings and wall time in ``run.json``; running again with the same folder reuses every finished stage whose
settings did not change (a changed setting re-runs that stage and the ones after it). A recipe can be given as YAML
with the same field names as :class:`Recipe`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LayerPruneError
from .launch import LaunchSettings
from .run_folders import copy_importance, depth_folders_of, extract_depths, is_model_folder, place_depth_reports
from .run_state import RunState, RunSummary, format_stages, format_summary, summary_rows


@dataclass
class Recipe:
    """Settings of a full run (YAML keys use the same names)."""

    model: str = "toy"
    criterion: str = "preference"
    scorer: str | None = None  # default: the model's (toy on the toy world, hpsv2.1 otherwise)
    prompts: str | None = None  # scoring prompts; default: the model's (toy:train; Pick-a-Pic for PixArt-Sigma)
    train_prompts: str | None = None  # distillation prompts; default: the model's (toy:train; Pick-a-Pic train)
    dtype: str = "auto"  # weights dtype; auto: the model's (bfloat16 for PixArt-Sigma, float32 for the toy)
    transformer_only: bool = False  # pruned/ and distilled/ hold only the transformer; the rest stays in `model`
    base_model: str | None = None  # Hub id of `model` for the card when `model` is a local folder
    num_prompts: int | None = 64
    scan_steps: int | None = None  # sampling steps while scoring; default: the model's
    num_layers: int | None = None  # pruned depth (blocks kept); or remove, or ratio
    remove: int | None = None  # blocks to remove
    ratio: float | None = 0.25  # fraction of blocks to remove
    plan: str = "one_shot"
    distill_steps: int = 300
    distill_batch_size: int = 16  # global batch: split over num_processes
    learning_rate: float = 2e-4
    use_lora: bool = False
    rank: int = 16
    eval_prompts: str | None = None
    eval_num_prompts: int | None = 200
    seed: int = 0
    output: str = "runs/toy"
    repo_id: str | None = None
    push: bool = False
    private: bool = False
    extra_train_args: list[str] = field(default_factory=list)
    num_processes: int | None = None  # distillation and scan processes; None: the accelerate config's, else 1/GPU
    accelerate_config: str | None = None  # accelerate config file (multi-GPU, FSDP, DeepSpeed); None: the default
    mixed_precision: str | None = None  # no, fp16, bf16 for distillation; None: the accelerate config's (no)
    use_ema: bool = False  # distil with an EMA of the student's weights (the EMA is saved and evaluated)
    export: list[str] = field(default_factory=list)  # one-file exports beside the final model: gguf:Q8_0, single-file
    # Nested depths distilled in one run, largest first (docs/elastic.md): the pruned model is the largest; every
    # smaller depth is extracted into OUTPUT/depth-N and every depth is evaluated. None: one depth.
    elastic_depths: list[int] | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Recipe:
        """Read a recipe file (fields as in the class); ``overrides`` (e.g. command-line flags) win.

        A YAML syntax error names the file, line and column; an unknown field or a value of the wrong type names
        the field and what it expects."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise LayerPruneError(f"recipe file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise LayerPruneError(f"recipe {path} is not UTF-8 text") from error
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise LayerPruneError(f"recipe {path}:{where}: {problem}") from error
        if not isinstance(data, dict):
            raise LayerPruneError(f"recipe {path} must be a mapping of field: value")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise LayerPruneError(f"recipe {path}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
        data = {name: _yaml_number(cls, name, value) for name, value in data.items()}
        for name, value in data.items():
            _check_field_type(cls, name, value, f"recipe {path}")
        merged = {**data, **overrides}
        if merged.get("elastic_depths") and not {"num_layers", "remove", "ratio"} & set(merged):
            merged["ratio"] = None  # the pruned depth is the largest elastic depth, not the default ratio's
        recipe = cls(**merged)
        if "rank" in data and not recipe.use_lora:  # the rank of adapters that are not trained: silently ignored
            raise LayerPruneError(f"recipe {path}: rank applies only with use_lora: true; add it or leave rank out")
        return recipe

    def check(self) -> None:
        """Refuse, before anything is read at length or written, every value that cannot run: each field's range
        and name, the prompt sets, the model, the exports, the training arguments and the launch settings."""
        from .recipe_checks import check_recipe_values

        check_recipe_values(self)
        from .recipe_checks import check_elastic_depths, depth_request

        num_layers, ratio, remove = depth_request(self)
        if sum(v is not None for v in (num_layers, remove, ratio)) != 1:
            raise LayerPruneError(
                "give exactly one of num_layers (blocks to keep), remove (blocks to remove) or ratio (fraction to "
                "remove)"
            )
        from .modeling import read_transformer_config

        config = read_transformer_config(self.model)  # a wrong model or depth fails before anything is written
        check_elastic_depths(self, config)
        if config is not None:
            from .families import family_of_config
            from .importance import num_to_remove

            family = family_of_config(config, str(self.model))
            num_to_remove(family.depth(config), num_layers, ratio, remove=remove)
        if self.export:
            from .export import check_exportable, parse_export_spec

            for spec in self.export:
                parse_export_spec(spec)
            if config is None:  # short names built in code: their config is known once built (cheap for those)
                from .modeling import load_transformer

                transformer = load_transformer(self.model)
                config = dict(transformer.config, _class_name=type(transformer).__name__)
            check_exportable(config, str(self.model))
        if self.distill_steps < 0:
            raise LayerPruneError("distill_steps must be >= 0 (0 skips distillation)")
        if self.distill_batch_size < 1:
            raise LayerPruneError(f"distill_batch_size must be at least 1, got {self.distill_batch_size}")
        if self.push and not self.repo_id:
            raise LayerPruneError("push needs repo_id (user/name)")
        if self.repo_id:
            from .hub import check_repo_id

            check_repo_id(self.repo_id)
        if self.base_model:
            from .hub import check_base_model

            check_base_model(self.base_model)
        launch = self.launch_settings()
        launch.check()
        if self.distill_steps > 0 and self.distill_batch_size % launch.resolved_num_processes():
            n = launch.resolved_num_processes()
            raise LayerPruneError(
                f"distill_batch_size {self.distill_batch_size} (the global batch) does not split evenly over {n} "
                f"processes; give a multiple of {n}"
            )

    def launch_settings(self, verbose: bool = False) -> LaunchSettings:
        """How the distillation (and a multi-process scan) are started under ``accelerate launch``."""
        return LaunchSettings(
            num_processes=self.num_processes,
            accelerate_config=self.accelerate_config,
            mixed_precision=self.mixed_precision,
            verbose=verbose,
        )


def _yaml_number(cls, name: str, value):
    """``learning_rate: 2e-4`` is text to YAML 1.1 (its floats need a dot): read it as the number it is written as,
    for float fields only."""
    import typing

    hint = typing.get_type_hints(cls)[name]
    if isinstance(value, str) and float in (hint, *typing.get_args(hint)):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_field_type(cls, name: str, value, where: str) -> None:
    """Refuse a recipe value whose type does not fit the field (``num_prompts: many``, ``use_lora: 3``)."""
    import types
    import typing

    hint = typing.get_type_hints(cls)[name]
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = tuple(t for t in typing.get_args(hint) if t is not type(None)) if is_union else (hint,)
    optional = is_union and type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return
        raise LayerPruneError(f"{where}: {name} cannot be empty")
    origins = tuple(typing.get_origin(t) or t for t in allowed)
    if bool in origins:
        ok = isinstance(value, bool)
    elif float in origins:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif int in origins:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif list in origins:
        ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value)
    else:
        ok = isinstance(value, origins)
    if not ok:
        expected = " or ".join(getattr(t, "__name__", str(t)) for t in origins)
        raise LayerPruneError(f"{where}: {name} must be {expected}, got {value!r}")


def run_recipe(recipe: Recipe, *, log=print, verbose: bool = False) -> list[dict]:
    """Run (or resume) the recipe; returns the summary rows printed at the end. Unless ``verbose``, the libraries'
    INFO lines and loading bars are off (here and in the launched processes): each stage shows one progress bar."""
    from .quiet import quiet

    with quiet(not verbose):
        return _run_recipe(recipe, log, verbose)


def _run_recipe(recipe: Recipe, log, verbose: bool) -> list[dict]:
    recipe.check()
    launch = recipe.launch_settings(verbose)
    state = RunState(Path(recipe.output).expanduser())  # a damaged run.json is refused before anything is written
    out = _prepare_run_folder(recipe)
    importance_path = out / "importance.json"
    timings: dict[str, tuple[str, float]] = {}  # stage -> ("ran" | "reused", seconds of this run)

    def ran(stage: str, settings: dict, start: float, **results) -> None:
        seconds = time.perf_counter() - start
        state.mark(stage, settings, seconds, **results)
        timings[stage] = ("ran", seconds)

    # 1. Score the blocks.
    from .modeling import model_defaults

    defaults = model_defaults(recipe.model)
    eval_prompts = recipe.eval_prompts or defaults["eval_prompts"]
    score_settings = {
        k: getattr(recipe, k)
        for k in ("model", "criterion", "scorer", "prompts", "num_prompts", "scan_steps", "seed", "dtype")
    }
    score_settings["exclude"] = eval_prompts
    # A selection trained for one removal count (learnable) is scored for the count this recipe removes.
    remove_for_score = _removal_count(recipe) if recipe.criterion in CRITERIA_FOR_ONE_COUNT else None
    if remove_for_score is not None:
        score_settings["remove"] = remove_for_score
    if not (state.done("score", score_settings) and importance_path.is_file()):
        processes = launch.resolved_num_processes()
        log(
            f"[1/5] scoring blocks of {recipe.model} with the {recipe.criterion} criterion"
            + (f" ({processes} processes)" if processes > 1 else "")
        )
        start = time.perf_counter()
        state.start("score", score_settings)
        # Score on training prompts, never on evaluation prompts: that would flatter the evaluation.
        _score(
            recipe, importance_path, recipe.prompts or defaults["score_prompts"], eval_prompts, launch, log,
            remove=remove_for_score,
        )  # fmt: skip
        ran("score", score_settings, start)
    else:
        log(f"[1/5] reusing {importance_path}")
        timings["score"] = ("reused", 0.0)

    # 2. Prune.
    from .importance import LayerImportance, num_to_remove, plan_blocks
    from .recipe_checks import depth_request

    importance = LayerImportance.load(importance_path)
    num_layers, ratio, remove = depth_request(recipe)
    k = num_to_remove(importance.num_layers, num_layers, ratio, remove=remove)
    drop = sorted(plan_blocks(importance, k, recipe.plan))
    pruned = out / "pruned"
    prune_settings = {"model": recipe.model, "drop": drop, "dtype": recipe.dtype, "only": recipe.transformer_only}
    if not (state.done("prune", prune_settings) and is_model_folder(pruned)):
        log(f"[2/5] removing blocks {drop} ({k} of {importance.num_layers}, plan {recipe.plan})")
        start = time.perf_counter()
        state.start("prune", prune_settings)
        from .modeling import prune_to_folder
        from .provenance import local_inputs

        prune_to_folder(
            recipe.model,
            pruned,
            pruned_layers=drop,
            transformer_only=recipe.transformer_only,
            dtype=recipe.dtype,
            overwrite=True,
            inputs=local_inputs(recipe.model),
        )
        copy_importance(importance_path, pruned)
        ran("prune", prune_settings, start)
    else:
        log(f"[2/5] reusing {pruned}")
        timings["prune"] = ("reused", 0.0)

    # 3. Distill: the training script under accelerate launch, as users run it.
    final = pruned
    if recipe.distill_steps > 0:
        final = out / "distilled"
        distill_settings = {
            k: getattr(recipe, k)
            for k in (
                "distill_steps",
                "distill_batch_size",
                "learning_rate",
                "use_lora",
                "rank",
                "use_ema",
                "seed",
                "train_prompts",
                "dtype",
                "transformer_only",
                "extra_train_args",
                "num_processes",
                "accelerate_config",
                "mixed_precision",
            )
        }
        distill_settings.update(model=recipe.model, drop=drop, exclude=eval_prompts)
        elastic_args = []
        if recipe.elastic_depths:  # one run trains every depth; smaller depths drop blocks in the scored order
            distill_settings["elastic_depths"] = list(recipe.elastic_depths)
            elastic_args = ["--elastic_depths", ",".join(map(str, recipe.elastic_depths))]
            elastic_args += ["--importance", str(importance_path.resolve())]
        if not (state.done("distill", distill_settings) and is_model_folder(final)):
            n = launch.resolved_num_processes()
            log(
                f"[3/5] distilling for {recipe.distill_steps} steps"
                + (" (LoRA)" if recipe.use_lora else "")
                + (f" on {n} processes" if n > 1 else "")
            )
            start = time.perf_counter()
            # Checkpoints are resumed only when they come from an attempt with these very settings; any other
            # output of ours in the folder is removed by the script (--overwrite_output_dir) before it starts.
            same = state.attempt("distill") == json.loads(json.dumps(distill_settings, default=str))
            state.start("distill", distill_settings)
            resume = same and any(final.glob("checkpoint-*"))
            from .distill import distill_student

            distill_student(
                recipe.model,
                pruned,
                final,
                max_train_steps=recipe.distill_steps,
                global_batch_size=recipe.distill_batch_size,
                learning_rate=recipe.learning_rate,
                lr_scheduler="cosine",
                lr_warmup_steps=max(1, recipe.distill_steps // 20),
                checkpointing_steps=max(1, recipe.distill_steps // 4),
                checkpoints_total_limit=1,
                seed=recipe.seed,
                use_lora=recipe.use_lora,
                rank=recipe.rank,
                use_ema=recipe.use_ema,
                prompts=recipe.train_prompts or defaults["train_prompts"],
                exclude_prompts=eval_prompts,
                save_dtype=recipe.dtype,
                transformer_only=recipe.transformer_only,
                resume_from_checkpoint="latest" if resume else None,
                overwrite_output_dir=not resume and final.exists() and any(final.iterdir()),
                launch=launch,
                extra_args=[*recipe.extra_train_args, *elastic_args],
            )
            copy_importance(importance_path, final)
            ran("distill", distill_settings, start)
        else:
            log(f"[3/5] reusing {final}")
            timings["distill"] = ("reused", 0.0)

    # 3b. Elastic: every smaller trained depth as an ordinary pruned folder, OUTPUT/depth-N (the largest depth is the
    # distilled folder itself, with elastic.json beside its model).
    depth_folders = depth_folders_of(recipe, out)
    if depth_folders:
        extract_settings = {"depths": list(recipe.elastic_depths)}
        if state.done("extract", extract_settings) and all(is_model_folder(f) for f in depth_folders.values()):
            log(f"[3/5] reusing {', '.join(str(f) for f in depth_folders.values())}")
            timings["extract"] = ("reused", 0.0)
        else:
            start = time.perf_counter()
            state.start("extract", extract_settings)
            extract_depths(final, depth_folders, out, importance_path, log)
            ran("extract", extract_settings, start)

    # 4. Evaluate the pruned model before and (if distilled) after distillation, each against the teacher. The
    # teacher's images and scores are generated once: the second evaluation takes them from the teacher cache.
    from .eval_report import EvalReport, with_latency
    from .evaluation import evaluate_pipeline, write_report_files
    from .latency import shared_latency

    reports: dict[str, EvalReport] = {}
    eval_settings = {"prompts": recipe.eval_prompts, "num_prompts": recipe.eval_num_prompts, "seed": recipe.seed}
    saved = 0.0
    stages = {"eval_pruned": pruned, "eval_distilled": final if final != pruned else None}
    stages = {stage: folder for stage, folder in stages.items() if folder is not None}
    elastic = bool(depth_folders)

    def reported(stage: str, folder: Path) -> bool:
        if elastic and stage == "eval_distilled":
            return all((f / "report.json").is_file() for f in [folder, *depth_folders.values()])
        return (folder / "report.json").is_file()

    to_run = [s for s, f in stages.items() if not (state.done(s, eval_settings) and reported(s, f))]
    # One interleaved latency measurement of the teacher, the pruned and the distilled model, shared by both
    # reports: timed in two evaluations, two models of one architecture read 1.06x and 1.34x on a shared CPU.
    measured = None
    # (an elastic run's depths are timed by their own evaluation, each depth against the teacher)
    timed = {s: f for s, f in stages.items() if not (elastic and s == "eval_distilled")}
    if to_run and [s for s in to_run if s in timed]:
        start = time.perf_counter()
        measured = _measure_latency(timed, recipe, log)
        timings["latency"] = ("ran", time.perf_counter() - start)
    names = {"eval_pruned": "pruned", "eval_distilled": "distilled"}
    for stage, folder in stages.items():
        report_path = folder / "report.json"
        if elastic and stage == "eval_distilled":
            if stage in to_run:
                log(f"[4/5] evaluating every depth of {folder} ({', '.join(map(str, recipe.elastic_depths))} blocks)")
                start = time.perf_counter()
                state.start(stage, eval_settings)
                from .elastic_eval import evaluate_elastic

                evaluate_elastic(
                    folder, output=report_path, overwrite=True, prompts=recipe.eval_prompts,
                    num_prompts=recipe.eval_num_prompts, seed=recipe.seed, latency_repeats=3,
                )  # fmt: skip
                place_depth_reports(folder, depth_folders, recipe.elastic_depths)
                ran(stage, eval_settings, start)
            else:
                log(f"[4/5] reusing the reports of every depth of {folder}")
                timings[stage] = ("reused", 0.0)
            for depth in recipe.elastic_depths:
                reports[f"eval_depth{depth}"] = EvalReport.load(depth_folders.get(depth, folder) / "report.json")
            continue
        if stage in to_run:
            log(f"[4/5] evaluating {folder}")
            start = time.perf_counter()
            state.start(stage, eval_settings)
            report = evaluate_pipeline(
                folder,
                output=report_path,
                overwrite=True,
                prompts=recipe.eval_prompts,
                num_prompts=recipe.eval_num_prompts,
                seed=recipe.seed,
                latency_repeats=3,
                latency=shared_latency(measured, names[stage]),
            )
            cache = report.settings.teacher_cache or {}
            reused = cache.get("seconds", 0.0) if cache.get("reused") else 0.0
            saved += reused
            ran(stage, eval_settings, start, teacher_seconds_saved=round(reused, 1))
        else:
            log(f"[4/5] reusing {report_path}")
            report = EvalReport.load(report_path)
            timings[stage] = ("reused", 0.0)
            if measured is not None:  # the other model was timed again: both reports carry the new measurement
                report = with_latency(report, shared_latency(measured, names[stage]))
                write_report_files(report, report_path)
        reports[stage] = report

    # 5. One-file exports beside the final model (listed in its card, uploaded with it).
    if recipe.export:
        for folder in (final, *depth_folders.values()):
            _export_files(folder, recipe.export, log)

    # 6. Model card (and push).
    from .hub import push_pipeline, render_model_card, write_model_card

    repo_id = recipe.repo_id or f"your-name/{Path(recipe.output).name}"
    log(f"[5/5] model card {final / 'README.md'}" + (f", pushing to {repo_id}" if recipe.push else ""))
    start = time.perf_counter()
    if recipe.push:
        push_pipeline(final, repo_id, private=recipe.private, base_model=recipe.base_model)
    else:
        write_model_card(final, render_model_card(final, repo_id, base_model=recipe.base_model))
    for depth, folder in depth_folders.items():  # cards only: push uploads the run's final model
        card = render_model_card(folder, f"{repo_id}-depth{depth}", base_model=recipe.base_model)
        write_model_card(folder, card)
    timings["card"] = ("ran", time.perf_counter() - start)

    rows = summary_rows(reports)
    log(format_summary(rows))
    log(format_stages(timings, saved))
    RunSummary(
        final_model=str(final),
        rows=rows,
        stages={name: {"status": status, "seconds": round(sec, 1)} for name, (status, sec) in timings.items()},
        teacher_seconds_saved=round(saved, 1),
        depth_models={str(d): str(depth_folders.get(d, final)) for d in recipe.elastic_depths or ()} or None,
    ).save(out / "summary.json")
    return rows


LATENCY_REPEATS = 9


def _measure_latency(folders: dict[str, Path], recipe: Recipe, log) -> dict[str, dict]:
    """One interleaved measurement of the teacher (the models' ``source_model``) and the model of each folder
    (``eval_pruned`` -> ``pruned``, ``eval_distilled`` -> ``distilled``) with the evaluation's dtype, device,
    resolution and sampler: :func:`~diffusers_layerprune.evaluation.transformer_latency` plus end-to-end seconds per
    image (``pipeline_s``, :func:`~diffusers_layerprune.evaluation.pipeline_seconds`, on the first evaluation
    prompt). Models of one architecture share both numbers."""
    from .data import load_prompts
    from .evaluation import pipeline_seconds, transformer_latency
    from .families import encode_text, family_of
    from .modeling import generation_defaults, load_pipeline, model_defaults, resolve_dtype

    names = {"eval_pruned": "pruned", "eval_distilled": "distilled"}
    first = next(iter(folders.values()))
    dtype = resolve_dtype("auto", str(first))
    light = dict(torch_dtype=dtype, text_encoder=None, tokenizer=None)  # the first model encodes the prompt
    pipes = {
        names[stage]: load_pipeline(folder, torch_dtype=dtype) if i == 0 else load_pipeline(folder, **light)
        for i, (stage, folder) in enumerate(folders.items())
    }
    student = next(iter(pipes.values()))
    teacher = student.transformer.config.get("source_model")
    if teacher:
        pipes = {"teacher": load_pipeline(teacher, **light), **pipes}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    defaults = generation_defaults(str(first), student)
    msl, guidance = defaults["max_sequence_length"], defaults["guidance_scale"]
    log(f"[4/5] timing {', '.join(pipes)} in one measurement ({LATENCY_REPEATS} interleaved repeats)")
    measured = transformer_latency(
        {name: p.transformer for name, p in pipes.items()},
        resolution=defaults["resolution"],
        vae_scale_factor=student.vae_scale_factor,
        text_tokens=msl,
        batch_size=family_of(student.transformer).denoising_batch(guidance, student.transformer.config),
        repeats=LATENCY_REPEATS,
    )
    prompt = load_prompts(recipe.eval_prompts or model_defaults(str(first))["eval_prompts"], limit=1).prompts
    text = encode_text(student, prompt, max_sequence_length=msl)
    negative = encode_text(student, [""], max_sequence_length=msl) if guidance > 1 else None
    wall = pipeline_seconds(
        pipes,
        text,
        negative,
        repeats=3,
        pooled_with={name: stats["pooled_with"] for name, stats in measured.items()},
        seeds=[recipe.seed],
        num_inference_steps=defaults["num_inference_steps"],
        guidance_scale=guidance,
        resolution=defaults["resolution"],
        max_sequence_length=msl,
    )
    return {name: {**stats, "pipeline_s": wall[name]} for name, stats in measured.items()}


# Criteria whose result depends on how many blocks will be removed (they learn a selection of exactly that size).
CRITERIA_FOR_ONE_COUNT = ("learnable",)


def _removal_count(recipe: Recipe) -> int | None:
    """How many blocks the recipe removes, from the model's config (None when the config cannot be read here)."""
    from .families import family_of_config
    from .importance import num_to_remove
    from .modeling import read_transformer_config

    config = read_transformer_config(recipe.model)
    if config is None:
        return None
    from .recipe_checks import depth_request

    depth = family_of_config(config, str(recipe.model)).depth(config)
    num_layers, ratio, remove = depth_request(recipe)
    return num_to_remove(depth, num_layers, ratio, remove=remove)


def _score(
    recipe: Recipe, output: Path, prompts: str, exclude: str, launch: LaunchSettings, log, remove: int | None = None
) -> None:
    """The score stage: :func:`score_blocks` in this process, or with several processes ``layerprune score``
    under ``accelerate launch`` (each process scores its share of the variants). ``remove``: the removal count a
    count-specific criterion (learnable) trains its selection for."""
    common = dict(
        remove=remove,
        scorer=recipe.scorer,
        prompts=prompts,
        exclude_prompts=exclude,
        num_prompts=recipe.num_prompts,
        steps=recipe.scan_steps,
        seed=recipe.seed,
        dtype=recipe.dtype,
    )
    if launch.resolved_num_processes() == 1:
        from .importance import score_blocks

        score_blocks(recipe.model, recipe.criterion, output, log=log, **common)
        return
    from .launch import CLI_MODULE, run_launched

    flags = {
        "scorer": "--scorer",
        "prompts": "--prompts",
        "exclude_prompts": "--exclude-prompts",
        "num_prompts": "--num-prompts",
        "steps": "--steps",
        "seed": "--seed",
        "dtype": "--dtype",
        "remove": "--remove",
    }
    args = [*(["--verbose"] if launch.verbose else []), "score", "--model", recipe.model]
    args += ["--criterion", recipe.criterion, "--output", str(output), "--overwrite"]
    for name, flag in flags.items():
        if common[name] is not None:
            args += [flag, str(common[name])]
    run_launched(CLI_MODULE, args, launch, what="scoring")


def _export_files(final: Path, specs: list[str], log) -> None:
    """Write each export of ``specs`` into ``final``, replacing exports of an earlier run (they are ours and may hold
    weights the final model no longer has); unchanged files newer than the weights are reused."""
    from .export import (
        export_file_name,
        export_transformer,
        exported_files,
        parse_export_spec,
        weight_files,
        weights_dir_of,
    )

    weights = max(p.stat().st_mtime for p in weight_files(weights_dir_of(final)))
    wanted = {export_file_name(*parse_export_spec(spec)): parse_export_spec(spec) for spec in specs}
    for path in exported_files(final):
        if path.name not in wanted or path.stat().st_mtime < weights:
            path.unlink()
    for name, (fmt, quant) in wanted.items():
        if (final / name).is_file():
            log(f"[5/5] reusing {final / name}")
            continue
        log(f"[5/5] exporting {final / name}")
        export_transformer(final, final / name, fmt=fmt, quant=quant)


def _prepare_run_folder(recipe: Recipe) -> Path:
    """Check the run folder and the stage folders in it before any work (a refusal changes nothing), then create
    it with the package's marker and remove temporaries that killed runs left in it."""
    from .outputs import check_output_dir, check_training_output_dir, check_work_dir, clean_stale_temps, write_marker
    from .provenance import full_local, local_inputs

    inputs = local_inputs(recipe.model)
    out = check_work_dir(recipe.output, inputs=inputs)
    if (out / "pruned").exists():
        check_output_dir(out / "pruned", overwrite=True, inputs=inputs)
    if (out / "distilled").exists():
        check_training_output_dir(out / "distilled", inputs=[*inputs, out / "pruned"], overwrite=True)
    for folder in sorted(out.glob("depth-*")):  # an elastic run's depths, replaced or removed: must be ours
        check_output_dir(folder, overwrite=True, inputs=[*inputs, out / "distilled"])
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "run", local={"model": full_local(recipe.model)}, entries=())
    clean_stale_temps(out)
    return out
