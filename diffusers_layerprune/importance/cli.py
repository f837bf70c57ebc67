"""``layerprune score`` and the ``--importance`` alternative of ``layerprune prune``.

Everything a user can get wrong (criterion, scorer, output, prompts, model path, number of blocks) is checked before
any model is loaded, and nothing is written unless the scan finishes.
"""

from __future__ import annotations

import argparse

from ..arguments import model_options
from ..errors import LayerPruneError
from ..validation import non_negative_float, non_negative_int, positive_int
from .registry import CRITERIA_MODULES
from .scoring import score_blocks

PLAN_NAMES = ("one_shot", "greedy", "span")  # checked against plans.PLANS in the tests


def add_score_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``layerprune score`` on the CLI's subparsers."""
    from ..arguments import add_model_args

    names = ", ".join(CRITERIA_MODULES)
    score = subparsers.add_parser(
        "score",
        help="measure the importance of every transformer block (writes JSON + PNG)",
        description="Score every transformer block of a pipeline (PixArt-Sigma, Sana, SD3, Flux) with one criterion and write a "
        "layer-importance JSON file and a bar chart (PNG) next to it. Finished work is appended to "
        "<output>.progress*.jsonl: a killed scan restarts where it stopped. Under `accelerate launch` the work is "
        "split across processes.",
    )
    add_model_args(score)
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
    score.add_argument(
        "--remove",
        type=positive_int,
        default=None,
        metavar="K",
        help="blocks you plan to remove: the stability report (bootstrap probability of the same selection, blocks "
        "tied at the cut) and --adaptive are for this count (default: 25%% of the blocks)",
    )
    score.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="bootstrap resamples of the prompts for the stability report, criteria with per-prompt values "
        "(preference); 0 skips it (default: 1000)",
    )
    score.add_argument(
        "--adaptive",
        action="store_true",
        help="adaptive scan (preference): prompts in rounds; blocks clearly above or below the cut of --remove K stop "
        "being generated; stops when settled or when the prompts (--num-prompts: the budget) are spent",
    )
    score.add_argument(
        "--round-prompts",
        type=positive_int,
        default=8,
        metavar="R",
        help="with --adaptive: prompts per round, a multiple of --batch-size (default: 8)",
    )
    score.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="with --adaptive: confidence of the paired intervals, Bonferroni-corrected over the pairs at the cut "
        "(default: 0.9)",
    )
    score.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=0.05,
        help="with --adaptive: a pair of blocks is settled once removing one rather than the other surely costs at "
        "most TOLERANCE x the full model's mean preference score (default: 0.05; 0 asks for certainty)",
    )
    score.add_argument(
        "--group-size",
        type=positive_int,
        default=None,
        metavar="M",
        help="with --criterion learnable: blocks per group, each group losing the same number (must divide the depth; "
        "default: the largest group with at most 4096 possible masks)",
    )
    score.add_argument(
        "--learn-steps",
        type=positive_int,
        default=None,
        metavar="S",
        help="with --criterion learnable: training steps of the masks and the recovery LoRA (default: 200)",
    )
    score.add_argument(
        "--learn-micro-batch",
        type=positive_int,
        default=None,
        metavar="N",
        help="with --criterion learnable: samples (prompts x probe timesteps) per forward/backward pass, gradients "
        "accumulated over the step (default: as many as fit 8 GiB of activations, recomputing blocks in the "
        "backward pass when needed: 1024 px PixArt-Sigma-XL takes 5 per pass)",
    )
    score.add_argument("--output", default="importance.json", help="JSON file to write (default: importance.json)")
    score.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    score.add_argument("--no-progress", action="store_true", help="no progress bar")
    score.set_defaults(func=cmd_score)
    return score


def cmd_score(args: argparse.Namespace) -> int:
    if not args.adaptive and (args.round_prompts != 8 or args.tolerance != 0.05 or args.confidence != 0.9):
        raise LayerPruneError("--round-prompts, --confidence and --tolerance go with --adaptive")
    score_blocks(
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
        remove=args.remove,
        adaptive=args.adaptive,
        round_prompts=args.round_prompts,
        tolerance=args.tolerance,
        confidence=args.confidence,
        bootstrap=args.bootstrap,
        group_size=args.group_size,
        learn_steps=args.learn_steps,
        learn_micro_batch=args.learn_micro_batch,
        **model_options(args),
        overwrite=args.overwrite,
        show_progress=not args.no_progress,
        log=print,
    )
    return 0


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


def pruned_layers_from_importance(
    args: argparse.Namespace, depth: int, model: str, family: str | None = None
) -> list[int]:
    """The blocks ``--importance`` + ``--num-layers``/``--remove``/``--ratio`` + ``--plan`` remove from ``model``
    (of model family ``family``: a file measured on another family is refused)."""
    from .plans import num_to_remove, plan_blocks
    from .result import LayerImportance, check_importance_matches

    importance = LayerImportance.load(args.importance)
    check_importance_matches(importance, depth, model, family)
    k = num_to_remove(depth, args.num_layers, args.ratio, remove=args.remove)
    return plan_blocks(importance, k, args.plan)
