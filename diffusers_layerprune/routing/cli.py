"""``layerprune route``: every setting and the output folder are checked before any weights load, and nothing is
written unless the run finishes."""

from __future__ import annotations

import argparse

from ..arguments import model_options


def _budget(text: str) -> float:
    """A budget as written: ``1.0`` (or ``1e0``) is refused, since it reads as the whole depth (a fraction) as much
    as one block (a count); ``1`` is one block."""
    from ..validation import finite_float

    value = finite_float(text)
    if value == 1 and not text.strip().isdigit():
        raise argparse.ArgumentTypeError(
            f"{text} is ambiguous: a fraction (the whole depth, which saves nothing) or one block; write 1 for one "
            "block, or a fraction below 1 such as 0.75"
        )
    return value


def add_route_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``layerprune route`` on the CLI's subparsers."""
    from ..arguments import PROMPT_SPEC_FORMS, add_device_arg, add_model_args, add_output_args, add_prompt_args
    from ..validation import any_int, non_negative_int, positive_float, positive_int
    from . import MARGINALS

    parser = subparsers.add_parser(
        "route",
        help="learn a prompt router and K block codes under a mean-depth budget (prompt-routed depth)",
        description="Prompt-routed depth (after APTP): learn K architecture codes (sets of blocks to run, sharing the "
        "model's weights) and a small router on the pooled text embedding that sends each prompt to one code, so "
        "that the mean number of blocks run meets --budget on the training prompts. Saves a folder that stock "
        "DiffusionPipeline.from_pretrained loads as the full-depth model, plus routing.json and router.safetensors "
        "that RoutedPixArtSigmaPipeline.from_pretrained adds (docs/routing.md). On an already pruned model the "
        "budget counts blocks of the pruned model. On an elastic run's folder (train_distill --elastic_depths) the "
        "codes are its trained depths and only the router is trained: each prompt runs one of those depths.",
    )
    add_model_args(parser)
    parser.add_argument(
        "--num-codes",
        type=any_int,
        default=None,
        metavar="K",
        help="number of codes (>= 1); required, except for an elastic run's folder (one code per trained depth)",
    )
    parser.add_argument(
        "--budget",
        type=_budget,
        required=True,
        metavar="B",
        help="mean blocks run per prompt: a fraction of the depth in (0, 1), e.g. 0.75, or a block count, e.g. 9",
    )
    add_prompt_args(parser, f"training prompts: toy:train, {PROMPT_SPEC_FORMS} (default: the model's training prompts)")
    parser.add_argument("--min-blocks", type=positive_int, default=1, help="blocks every code runs at least")
    parser.add_argument("--steps", type=positive_int, default=300, help="router/code training steps (default 300)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-2, help="router/code learning rate")
    parser.add_argument(
        "--marginals",
        default="uniform",
        choices=MARGINALS,
        help="optimal-transport balance of the assignment: uniform shares, budget-weighted shares, or none",
    )
    parser.add_argument(
        "--finetune-steps",
        type=non_negative_int,
        default=0,
        help="then fine-tune the shared weights with hard routing for this many steps, in this process (default 0: "
        "weights kept); on several processes: accelerate launch -m diffusers_layerprune.routing.finetune",
    )
    parser.add_argument("--finetune-learning-rate", type=positive_float, default=2e-4, help="fine-tuning learning rate")
    parser.add_argument("--seed", type=any_int, default=0, help="seed of every random draw (default 0)")
    add_device_arg(parser)
    add_output_args(parser, "the routed pipeline")
    parser.set_defaults(func=cmd_route)
    return parser


def cmd_route(args: argparse.Namespace) -> int:
    from .train import RoutingSettings, route_to_folder

    settings = RoutingSettings(
        num_codes=args.num_codes,
        budget=args.budget,
        min_blocks=args.min_blocks,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        marginals=args.marginals,
        finetune_steps=args.finetune_steps,
        finetune_learning_rate=args.finetune_learning_rate,
        seed=args.seed,
    )
    routed = route_to_folder(
        args.model,
        args.output,
        prompts=args.prompts,
        prompt_column=args.prompt_column,
        num_prompts=args.num_prompts,
        settings=settings,
        device=args.device,
        **model_options(args),
        overwrite=args.overwrite,
        log=print,
    )
    print(render_codes(routed.routing.record))
    print(f"saved: {args.output} (stock pipeline folder + routing.json + router.safetensors)")
    return 0


def render_codes(record) -> str:
    """One line per code: blocks run, share of the training prompts, the prompts closest to its centre."""
    lines = [
        f"{record.num_codes} codes, budget {record.budget:g} of {record.num_layers} blocks, routed mean "
        f"{record.mean_blocks:.2f} on {record.training.get('num_prompts', '?')} training prompts"
    ]
    for k, code in enumerate(record.codes):
        skipped = record.skipped_layers(k)
        lines.append(
            f"  code {k}: {len(code.kept_layers)} blocks (skips {skipped or 'none'}), {code.share:.1%} of prompts; "
            f"closest: {' | '.join(code.closest_prompts) or '-'}"
        )
    return "\n".join(lines)
