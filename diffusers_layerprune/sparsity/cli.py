"""``layerprune sparsify``: every setting, the output folder, the model's components and the calibration prompts
are checked before any weights load, and nothing is written unless the run finishes."""

from __future__ import annotations

import argparse

from ..arguments import model_options
from .registry import METHOD_MODULES


def add_sparsify_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``layerprune sparsify`` on the CLI's subparsers."""
    from ..arguments import PROMPT_SPEC_FORMS, add_device_arg, add_model_args, add_output_args, add_prompt_args
    from ..validation import any_int, positive_int

    parser = subparsers.add_parser(
        "sparsify",
        help="zero the least important weights of the text encoder and/or transformer (magnitude, Wanda; 2:4)",
        description="Post-training weight sparsity: zero a fraction of the Linear weights of the text encoder and/or "
        "the transformer (not embeddings, norms, or the transformer's final projection unless asked) and save a "
        "pipeline that stock diffusers loads, with sparsity.json recording method, pattern, target and achieved "
        "sparsity per component and layer, and the calibration prompts. Zeros are stored densely: the folder is as "
        "large as the dense one (docs/sparsity.md). Works on depth-pruned models too.",
    )
    add_model_args(parser)
    parser.add_argument(
        "--component", required=True, metavar="NAME", help="text_encoder, transformer or both: the components to prune"
    )
    parser.add_argument(
        "--method",
        default="magnitude",
        metavar="NAME",
        help=f"one of: {', '.join(METHOD_MODULES)} (default: magnitude). wanda scores |W| x ||X|| with input norms "
        "from --prompts",
    )
    parser.add_argument(
        "--sparsity", type=float, default=None, metavar="S", help="fraction of weights to zero, in [0, 1), e.g. 0.5"
    )
    parser.add_argument("--text-encoder-sparsity", type=float, default=None, metavar="S", help="overrides --sparsity")
    parser.add_argument("--transformer-sparsity", type=float, default=None, metavar="S", help="overrides --sparsity")
    parser.add_argument(
        "--pattern",
        default="unstructured",
        help="unstructured (default) or N:M: at most N non-zero weights in every M consecutive input weights; 2:4 "
        "runs on sparse tensor cores (Ampere or newer GPUs) and implies --sparsity 0.5",
    )
    parser.add_argument(
        "--scope",
        default="layer",
        help="unstructured comparison group: layer (default; each layer, for wanda each output row, loses exactly "
        "its share) or global (magnitude: one threshold over all pruned weights of a component)",
    )
    parser.add_argument(
        "--include-final-projection", action="store_true", help="prune the transformer's proj_out too (default: dense)"
    )
    add_prompt_args(
        parser,
        f"calibration prompts for wanda (required with it): toy:train, {PROMPT_SPEC_FORMS}",
        num_prompts_default=128,
        num_prompts_help="calibration prompts used (default: 128)",
    )
    parser.add_argument(
        "--calibration-steps",
        type=positive_int,
        default=None,
        help="sampler steps of the transformer's calibration pass (default: the model's inference steps)",
    )
    parser.add_argument("--seed", type=any_int, default=0, help="calibration prompt i uses seed SEED+i (default: 0)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per calibration batch (default: 8)")
    add_device_arg(parser, "torch device for calibration and scoring (default: cpu)")
    add_output_args(parser, "the sparsified pipeline")
    parser.set_defaults(func=cmd_sparsify)
    return parser


def cmd_sparsify(args: argparse.Namespace) -> int:
    from .core import sparsify_to_folder

    record = sparsify_to_folder(
        args.model,
        args.output,
        args.component,
        sparsity=args.sparsity,
        text_encoder_sparsity=args.text_encoder_sparsity,
        transformer_sparsity=args.transformer_sparsity,
        method=args.method,
        pattern=args.pattern,
        scope=args.scope,
        include_final_projection=args.include_final_projection,
        prompts=args.prompts,
        prompt_column=args.prompt_column,
        num_prompts=args.num_prompts,
        num_inference_steps=args.calibration_steps,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        **model_options(args),
        overwrite=args.overwrite,
        log=print,
    )
    print(f"sparsified {args.model}: {record.method}, {record.pattern}, scope {record.scope}")
    for name, c in record.components.items():
        print(
            f"  {name}: target {c.target:.1%}, achieved {c.achieved:.2%} "
            f"({c.zeros:,d} of {c.weights:,d} weights in {len(c.layers)} Linear layers)"
        )
    if record.calibration:
        p = record.calibration["prompts"]
        print(f"  calibration: {p['count']} prompts from {p['source']} (fingerprint {p['fingerprint']})")
    print(f"saved: {args.output} (with sparsity.json; zeros are stored densely, the folder keeps its dense size)")
    return 0
