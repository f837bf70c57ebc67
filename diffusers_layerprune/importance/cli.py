"""``layerprune score`` and the ``--importance`` alternative of ``layerprune prune``.

Everything a user can get wrong (criterion, scorer, output, prompts, model path, number of blocks) is checked before
any model is loaded, and nothing is written unless the scan finishes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LayerPruneError
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
        help="prompt set: a built-in name (toy:heldout, hpdv2, hpdv2:photo), a .txt/.json/.csv/.parquet file, or a "
        "datasets name (default: toy:heldout on the toy world, hpdv2 otherwise)",
    )
    score.add_argument("--prompt-column", default=None, help="column holding the prompts (files / datasets)")
    score.add_argument("--num-prompts", type=int, default=None, help="use the first N prompts (default: all)")
    score.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    score.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's)")
    score.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the model's)")
    score.add_argument("--seed", type=int, default=0, help="prompt i uses seed SEED+i (random: the draw) (default: 0)")
    score.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch (default: 8)")
    score.add_argument(
        "--num-timesteps",
        type=int,
        default=4,
        help="probe timesteps per prompt for block_influence, angular_distance, output_loss (default: 4)",
    )
    score.add_argument(
        "--greedy-steps",
        type=int,
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
    from .registry import get_criterion

    criterion = get_criterion(args.criterion)
    output = Path(args.output).expanduser()
    if output.is_dir():
        raise LayerPruneError(f"output {output} is a folder; give a .json file path")
    if output.exists() and not args.overwrite:
        raise LayerPruneError(f"output file {output} already exists; pass --overwrite to replace it")
    for name in ("num_prompts", "steps", "resolution", "batch_size", "num_timesteps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise LayerPruneError(f"--{name.replace('_', '-')} must be at least 1, got {value}")

    from ..modeling import read_transformer_config, scoring_defaults

    config = read_transformer_config(args.model, revision=args.revision)  # a wrong path fails before any loading
    if config is not None and args.greedy_steps and not 0 < args.greedy_steps < config["num_layers"]:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {config['num_layers'] - 1}")
    defaults = scoring_defaults(args.model)
    scorer_name = None
    if criterion.needs_scorer:
        scorer_name = args.scorer or defaults["scorer"]
        _check_scorer_name(scorer_name)
    if args.greedy_steps and not criterion.greedy:
        raise LayerPruneError(f"--greedy-steps: greedy re-scoring is not defined for the {criterion.name} criterion")

    prompts = None
    if criterion.needs_prompts:
        from ..data import load_prompts

        prompts = load_prompts(
            args.prompts or defaults["eval_prompts"], column=args.prompt_column, limit=args.num_prompts
        )

    import torch

    from ..modeling import generation_defaults, load_pipeline
    from ..scorers import load_scorer
    from . import compute_importance
    from .plans import greedy_order
    from .result import normalise_model_id
    from .runner import ImportanceScan, ScanSettings, process_state

    state = process_state()
    pipe = load_pipeline(args.model, torch_dtype=getattr(torch, args.dtype), revision=args.revision)
    pipe.to(state.device)
    gen = generation_defaults(args.model, pipe)
    settings = ScanSettings(
        num_inference_steps=args.steps or gen["num_inference_steps"],
        guidance_scale=gen["guidance_scale"] if args.guidance is None else args.guidance,
        resolution=args.resolution or gen["resolution"],
        max_sequence_length=gen["max_sequence_length"],
        seed=args.seed,
        batch_size=args.batch_size,
        num_timesteps=args.num_timesteps,
    )
    scorer = load_scorer(scorer_name, device=state.device) if scorer_name else None
    scan = ImportanceScan(
        pipe,
        prompts,
        settings,
        model_id=normalise_model_id(args.model),
        scorer=scorer,
        scorer_name=scorer_name,
        progress_path=output,
        free_text_encoder=True,
        show_progress=not args.no_progress,
        state=state,
    )
    if args.greedy_steps and not 0 < args.greedy_steps < scan.num_layers:
        raise LayerPruneError(f"--greedy-steps must be between 1 and {scan.num_layers - 1}")
    importance = compute_importance(criterion.name, scan)
    if args.greedy_steps:
        importance.extra["greedy_order"] = greedy_order(scan, criterion.name, args.greedy_steps)
    if state.is_main_process:
        importance.save(output, overwrite=args.overwrite)
        k = max(1, round(0.25 * importance.num_layers))
        print(f"{criterion.name} importance of {args.model} ({importance.num_layers} blocks)")
        print("block  " + " ".join(f"{i:>8d}" for i in range(importance.num_layers)))
        print("value  " + " ".join(f"{v:>8.4g}" for v in importance.values))
        print(f"least important {k}: {importance.least_important(k)}")
        if "additivity" in importance.extra:
            a = importance.extra["additivity"]
            print(
                f"additivity: removing {a['blocks']} together costs {a['measured_loss']:.4g}, the single losses sum "
                f"to {a['sum_of_single_losses']:.4g} (ratio {a['ratio']:.2f})"
            )
        if "best_span" in importance.extra:
            start = importance.extra["best_span"][str(k)]
            print(f"best span of {k} consecutive blocks (plan span): {list(range(start, start + k))}")
        if "greedy_order" in importance.extra:
            print(f"greedy removal order: {importance.extra['greedy_order']}")
        print(f"wrote {output} and {output.with_suffix('.png')}")
    scan.remove_progress()
    return 0


# ----------------------------------------------------------------------------------------------------------------
# layerprune prune --importance imp.json (--num-layers N | --ratio R) [--plan one_shot|greedy|span]
# ----------------------------------------------------------------------------------------------------------------


def add_prune_importance_args(prune: argparse.ArgumentParser, which) -> None:
    """Add ``--importance`` to the keep/drop group of ``prune`` and the options that go with it."""
    which.add_argument(
        "--importance",
        metavar="IMP.json",
        help="drop the least important blocks of a `layerprune score` file (with --num-layers or --ratio)",
    )
    prune.add_argument(
        "--num-layers", type=int, default=None, metavar="N", help="with --importance: number of blocks to remove"
    )
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
    """Refuse --num-layers/--ratio/--plan without --importance, and --importance without a size."""
    if getattr(args, "importance", None) is None:
        if args.num_layers is not None or args.ratio is not None or args.plan != "one_shot":
            raise LayerPruneError("--num-layers, --ratio and --plan go with --importance")
        return
    if (args.num_layers is None) == (args.ratio is None):
        raise LayerPruneError("with --importance give exactly one of --num-layers (blocks to remove) or --ratio")


def pruned_layers_from_importance(args: argparse.Namespace, depth: int, model: str) -> list[int]:
    """The blocks ``--importance`` + ``--num-layers``/``--ratio`` + ``--plan`` remove from ``model`` of ``depth``."""
    from .plans import num_to_remove, plan_blocks
    from .result import LayerImportance, check_importance_matches

    importance = LayerImportance.load(args.importance)
    check_importance_matches(importance, depth, model)
    k = num_to_remove(depth, args.num_layers, args.ratio)
    return plan_blocks(importance, k, args.plan)
