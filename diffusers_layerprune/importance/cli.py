"""``layerprune score`` and the ``--importance`` alternative of ``layerprune prune``.

Everything a user can get wrong (criterion, scorer, output, prompts, model path, number of blocks) is checked before
any model is loaded, and nothing is written unless the scan finishes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LayerPruneError
from ..validation import non_negative_float, non_negative_int, positive_int
from .registry import CRITERIA_MODULES

PLAN_NAMES = ("one_shot", "greedy", "span")  # checked against plans.PLANS in the tests


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``layerprune score`` on the CLI's subparsers."""
    from ..cli import _add_model_args

    names = ", ".join(CRITERIA_MODULES)
    score = subparsers.add_parser(
        "score",
        help="measure the importance of every transformer block (writes JSON + PNG)",
        description="Score every transformer block of a PixArt pipeline with one criterion and write a "
        "layer-importance JSON file and a bar chart (PNG) next to it. Finished work is appended to "
        "<output>.progress*.jsonl: a killed scan restarts where it stopped. Under `accelerate launch` the work is "
        "split across processes.",
    )
    _add_model_args(score)
    score.add_argument("--criterion", default="preference", help=f"one of: {names} (default: preference)")
    score.add_argument(
        "--scorer",
        default=None,
        help="preference scorer for --criterion preference: a name (hpsv2.1, hpsv2, pickscore, clip, toy) or a "
        "CLIPModel folder (default: toy on the toy world, hpsv2.1 otherwise)",
    )
    score.add_argument(
        "--prompts",
        default=None,
        help="prompt set: a built-in name (toy:train, hpdv2:photo), a .txt/.json/.jsonl/.csv/.parquet file, a dataset "
        "folder, or a Hub dataset as user/name[:config][:split][@column] (default: the model's scoring prompts: "
        "toy:train on the toy world, Pick-a-Pic's 500 unique validation prompts otherwise)",
    )
    score.add_argument("--prompt-column", default=None, help="column holding the prompts (files / datasets)")
    score.add_argument(
        "--exclude-prompts",
        default=None,
        metavar="SPEC",
        help="drop every prompt that is also in this prompt set, e.g. the evaluation prompts (hpdv2)",
    )
    score.add_argument("--num-prompts", type=positive_int, default=None, help="use the first N prompts (default: all)")
    score.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the model's)")
    score.add_argument(
        "--guidance", type=non_negative_float, default=None, help="guidance scale (default: the model's)"
    )
    score.add_argument(
        "--resolution", type=positive_int, default=None, help="image side in pixels (default: the model's)"
    )
    score.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED+i (random: the draw) (default: 0)")
    score.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generation batch (default: 8)")
    score.add_argument(
        "--num-timesteps",
        type=positive_int,
        default=4,
        help="probe timesteps per prompt for block_influence, angular_distance, output_loss (default: 4)",
    )
    score.add_argument(
        "--greedy-steps",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="also record the greedy removal order of K blocks (re-score after each removal) for `prune --plan greedy`",
    )
    score.add_argument("--output", default="importance.json", help="JSON file to write (default: importance.json)")
    score.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)
    return score


def _check_scorer_name(name: str) -> None:
    # Same rule as load_scorer, without loading anything: a registered name or an existing path.
    from ..scorers import SCORERS

    if name in SCORERS or Path(name).expanduser().exists():
        return
    raise LayerPruneError(f"unknown scorer {name!r}; known scorers: {', '.join(sorted(SCORERS))}, or a path")


def cmd_score(args: argparse.Namespace) -> int:
    score_to_file(
        args.model,
        args.criterion,
        args.output,
        scorer=args.scorer,
        prompts=args.prompts,
        prompt_column=args.prompt_column,
        exclude_prompts=args.exclude_prompts,
        num_prompts=args.num_prompts,
        steps=args.steps,
        guidance=args.guidance,
        resolution=args.resolution,
        seed=args.seed,
        batch_size=args.batch_size,
        num_timesteps=args.num_timesteps,
        greedy_steps=args.greedy_steps,
        dtype=args.dtype,
        revision=args.revision,
        base_model=args.base_model,
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
        log=print,
    )
    return 0


def score_to_file(
    model: str,
    criterion: str,
    output: str | Path,
    *,
    scorer: str | None = None,
    prompts: str | None = None,
    prompt_column: str | None = None,
    exclude_prompts: str | None = None,
    num_prompts: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    resolution: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    num_timesteps: int = 4,
    greedy_steps: int = 0,
    dtype: str = "auto",
    revision: str | None = None,
    base_model: str | None = None,
    overwrite: bool = True,
    show_progress: bool = True,
    log=None,
):
    """What ``layerprune score`` does, as a function: score ``model``'s blocks with ``criterion`` and write
    ``output`` (JSON) and its PNG. Returns the :class:`LayerImportance` (on every process).

    ``None`` settings take the model's defaults (``generation_defaults`` / ``scoring_defaults``). Everything a user
    can get wrong is checked before loading the model; a killed run resumes from ``<output>.progress*.jsonl``.
    Unlike the CLI, an existing ``output`` is replaced unless ``overwrite=False``.
    """
    from ..outputs import check_output_parent
    from .registry import get_criterion

    spec = get_criterion(criterion)
    output = Path(output).expanduser()
    if output.is_dir():
        raise LayerPruneError(f"output {output} is a folder; give a .json file path")
    if output.suffix.lower() != ".json":  # the plot goes beside it as <stem>.png: a .png output would be both
        raise LayerPruneError(f"--output {output} must end in .json (the bar chart is written beside it as .png)")
    check_output_parent(output)
    _check_importance_outputs(output, overwrite)
    for name, value in (
        ("num-prompts", num_prompts),
        ("steps", steps),
        ("resolution", resolution),
        ("batch-size", batch_size),
        ("num-timesteps", num_timesteps),
    ):
        if value is not None and value < 1:
            raise LayerPruneError(f"--{name} must be at least 1, got {value}")

    from ..modeling import check_resolution_for, read_transformer_config, scoring_defaults

    config = read_transformer_config(model, revision=revision)  # a wrong path fails before any loading
    check_resolution_for(model, resolution, config)
    if config is not None and greedy_steps and not 0 < greedy_steps < config["num_layers"]:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {config['num_layers'] - 1}")
    defaults = scoring_defaults(model)
    scorer_name = None
    if spec.needs_scorer:
        scorer_name = scorer or defaults["scorer"]
        _check_scorer_name(scorer_name)
    if greedy_steps and not spec.greedy:
        raise LayerPruneError(f"--greedy-steps: greedy re-scoring is not defined for the {spec.name} criterion")

    prompt_set = None
    if spec.needs_prompts:
        from ..data import load_prompts

        exclude = load_prompts(exclude_prompts) if exclude_prompts else None
        prompt_set = load_prompts(
            prompts or defaults["score_prompts"], column=prompt_column, limit=num_prompts, exclude=exclude
        )

    from ..modeling import generation_defaults, load_pipeline, resolve_dtype
    from ..scorers import load_scorer
    from . import compute_importance
    from .plans import greedy_order
    from .result import normalise_model_id
    from .runner import ImportanceScan, ScanSettings, process_state

    state = process_state()
    pipe = load_pipeline(model, torch_dtype=resolve_dtype(dtype, model), revision=revision, base_model=base_model)
    pipe.to(state.device)
    gen = generation_defaults(model, pipe)
    settings = ScanSettings(
        num_inference_steps=steps or gen["num_inference_steps"],
        guidance_scale=gen["guidance_scale"] if guidance is None else guidance,
        resolution=resolution or gen["resolution"],
        max_sequence_length=gen["max_sequence_length"],
        seed=seed,
        batch_size=batch_size,
        num_timesteps=num_timesteps,
    )
    scan = ImportanceScan(
        pipe,
        prompt_set,
        settings,
        model_id=normalise_model_id(model),
        scorer=load_scorer(scorer_name, device=state.device) if scorer_name else None,
        scorer_name=scorer_name,
        progress_path=output,
        free_text_encoder=True,
        show_progress=show_progress,
        state=state,
    )
    if greedy_steps and not 0 < greedy_steps < scan.num_layers:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {scan.num_layers - 1}")
    importance = compute_importance(spec.name, scan)
    if greedy_steps:
        importance.extra["greedy_order"] = greedy_order(scan, spec.name, greedy_steps)
    if state.is_main_process:
        importance.save(output, overwrite=True)
        if log is not None:
            _summary(importance, model, output, log)
    scan.remove_progress()
    return importance


def _check_importance_outputs(output: Path, overwrite: bool) -> None:
    """The JSON, its plot and the progress files: no symbolic links; existing files replaced only with
    ``overwrite`` and only when the JSON is an importance file of ours."""
    from ..outputs import check_not_symlink, check_output_file
    from .result import is_importance_file

    for path in (output, output.with_suffix(".png")):
        check_output_file(path, overwrite=overwrite, owned=lambda _: is_importance_file(output))
    for path in output.parent.glob(f"{output.name}.progress*.jsonl"):  # runner.progress_files, without torch
        check_not_symlink(path, "progress file")
    from .runner import check_progress_files

    check_progress_files(output)


def _summary(importance, model: str, output: Path, log) -> None:
    k = max(1, round(0.25 * importance.num_layers))
    log(f"{importance.criterion} importance of {model} ({importance.num_layers} blocks)")
    log("block  " + " ".join(f"{i:>8d}" for i in range(importance.num_layers)))
    log("value  " + " ".join(f"{v:>8.4g}" for v in importance.values))
    log(f"least important {k}: {importance.least_important(k)}")
    if "additivity" in importance.extra:
        a = importance.extra["additivity"]
        log(
            f"additivity: removing {a['blocks']} together costs {a['measured_loss']:.4g}, the single losses sum "
            f"to {a['sum_of_single_losses']:.4g} (ratio {a['ratio']:.2f})"
        )
    if "best_span" in importance.extra:
        start = importance.extra["best_span"][str(k)]
        log(f"best span of {k} consecutive blocks (plan span): {list(range(start, start + k))}")
    if "greedy_order" in importance.extra:
        log(f"greedy removal order: {importance.extra['greedy_order']}")
    log(f"wrote {output} and {output.with_suffix('.png')}")


# ----------------------------------------------------------------------------------------------------------------
# layerprune prune --importance imp.json (--num-layers N | --remove N | --ratio R) [--plan one_shot|greedy|span]
# ----------------------------------------------------------------------------------------------------------------


def add_prune_importance_args(prune: argparse.ArgumentParser, which) -> None:
    """Add ``--importance`` to the keep/drop group of ``prune`` and the options that go with it."""
    which.add_argument(
        "--importance",
        metavar="IMP.json",
        help="drop the least important blocks of a `layerprune score` file (with --num-layers, --remove or --ratio)",
    )
    prune.add_argument(
        "--num-layers",
        type=int,
        default=None,
        metavar="N",
        help="with --importance: pruned depth, the number of blocks to KEEP (as in diffusers' config.num_layers)",
    )
    prune.add_argument("--remove", type=int, default=None, metavar="N", help="with --importance: blocks to remove")
    prune.add_argument(
        "--ratio", type=float, default=None, metavar="R", help="with --importance: fraction of blocks to remove"
    )
    prune.add_argument(
        "--plan",
        default="one_shot",
        choices=PLAN_NAMES,
        help="with --importance: one_shot (the N least important), greedy (order stored by score --greedy-steps), "
        "span (N consecutive blocks, angular_distance files) (default: one_shot)",
    )


def check_prune_importance_args(args: argparse.Namespace) -> None:
    """Refuse --num-layers/--remove/--ratio/--plan without --importance, and --importance without one size."""
    sizes = [v for v in (args.num_layers, args.remove, args.ratio) if v is not None]
    if getattr(args, "importance", None) is None:
        if sizes or args.plan != "one_shot":
            raise LayerPruneError("--num-layers, --remove, --ratio and --plan go with --importance")
        return
    if len(sizes) != 1:
        raise LayerPruneError(
            "with --importance give exactly one of --num-layers (blocks to keep), --remove (blocks to remove) or "
            "--ratio (fraction to remove)"
        )


def pruned_layers_from_importance(args: argparse.Namespace, depth: int, model: str) -> list[int]:
    """The blocks ``--importance`` + ``--num-layers``/``--remove``/``--ratio`` + ``--plan`` remove from ``model``."""
    from .plans import num_to_remove, plan_blocks
    from .result import LayerImportance, check_importance_matches

    importance = LayerImportance.load(args.importance)
    check_importance_matches(importance, depth, model)
    k = num_to_remove(depth, args.num_layers, args.ratio, remove=args.remove)
    return plan_blocks(importance, k, args.plan)
