"""The ``layerprune`` command.

Each subcommand parses its arguments, checks what it can before loading any model (so a mistake costs nothing and
writes nothing), then calls the library. Mistakes a user can make raise :class:`LayerPruneError`; ``main`` prints
them on one line and exits 2, without a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .errors import LayerPruneError

DEFAULT_MODEL = "tiny-random"


def _index_list(text: str) -> list[int]:
    """Parse ``"0,1,3"`` (ranges such as ``"4-7"`` allowed) into a list of ints."""
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        span = re.fullmatch(r"(\d+)-(\d+)", part)
        if span:
            indices.extend(range(int(span[1]), int(span[2]) + 1))
        elif re.fullmatch(r"-?\d+", part):
            indices.append(int(part))  # negative values reach the range check, which names the valid range
        else:
            raise argparse.ArgumentTypeError(f"expected block indices such as 0,1,3 or 4-7, got {text!r}")
    if not indices:
        raise argparse.ArgumentTypeError("expected at least one block index")
    return indices


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pipeline to load: a short name ({DEFAULT_MODEL}), a local pipeline folder, or a Hub id "
        f"(default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="weights dtype (default: float32)",
    )


def _cmd_prune(args: argparse.Namespace) -> int:
    from .importance.cli import check_prune_importance_args, pruned_layers_from_importance
    from .outputs import check_output_dir

    check_prune_importance_args(args)
    check_output_dir(args.output, overwrite=args.overwrite)

    import torch

    from .blocks import resolve_kept_layers
    from .modeling import load_pipeline, prune_pipeline, read_transformer_config, save_pruned_pipeline

    config = read_transformer_config(args.model, revision=args.revision)
    if config is not None:  # check the indices before loading any weights
        if args.importance:
            args.drop = pruned_layers_from_importance(args, config["num_layers"], args.model)
        resolve_kept_layers(config["num_layers"], args.keep, args.drop)
    pipe = load_pipeline(args.model, torch_dtype=getattr(torch, args.dtype), revision=args.revision)
    if config is None and args.importance:  # short model names: the depth is known once loaded
        args.drop = pruned_layers_from_importance(args, pipe.transformer.config.num_layers, args.model)
    depth = pipe.transformer.config.num_layers
    pruned = prune_pipeline(pipe, kept_layers=args.keep, pruned_layers=args.drop, copy_weights=False)
    out = save_pruned_pipeline(pruned, args.output, overwrite=args.overwrite)
    cfg = pruned.transformer.config
    print(f"pruned {args.model}: {depth} -> {cfg.num_layers} blocks")
    print(f"kept blocks:    {cfg.kept_layers}")
    print(f"removed blocks: {pruned.transformer.pruned_layers}")
    print(f"saved pipeline: {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerprune",
        description="Depth pruning of diffusion transformers (PixArt-Sigma): score blocks, prune, distill, evaluate.",
    )
    from . import __version__
    from .importance.cli import add_prune_importance_args, add_score_parser

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show diffusers/transformers log messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prune = sub.add_parser(
        "prune",
        help="remove transformer blocks and save a pipeline that stock diffusers loads",
        description="Remove whole transformer blocks from a PixArt pipeline and save the pruned pipeline. "
        "The saved transformer records the source blocks it kept (config.kept_layers); stock "
        "DiffusionPipeline.from_pretrained loads the folder without this package.",
    )
    _add_model_args(prune)
    which = prune.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--keep", type=_index_list, metavar="I,J,...", help="source block indices to keep, e.g. 0,1,3 or 0-9,12"
    )
    which.add_argument("--drop", type=_index_list, metavar="I,J,...", help="source block indices to remove, e.g. 2,5")
    add_prune_importance_args(prune, which)
    prune.add_argument("--output", required=True, metavar="DIR", help="folder to write the pruned pipeline to")
    prune.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    prune.set_defaults(func=_cmd_prune)
    add_score_parser(sub)
    return parser


def _quiet_library_logs() -> None:
    # diffusers/transformers log hub retries and config notes as warnings; our own message says what went wrong.
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        _quiet_library_logs()
    try:
        return args.func(args)
    except LayerPruneError as error:
        print(f"layerprune {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerprune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
