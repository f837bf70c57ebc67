"""Command-line options shared by several commands (``layerprune prune/score/eval``).

A module of its own so that the command modules (``cli``, ``importance.cli``) import it without importing each
other.
"""

from __future__ import annotations

import argparse

DEFAULT_MODEL = "toy"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--revision``, ``--base-model`` and ``--dtype``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pipeline to load: a short name ({DEFAULT_MODEL}), a local pipeline folder, or a Hub id "
        f"(default: {DEFAULT_MODEL})",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--base-model",
        default=None,
        help="for a --model folder that holds only a transformer: the pipeline it belongs to (default: the "
        "source_model its config records)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights dtype (default: auto, the model's: bfloat16 for PixArt-Sigma, float32 for the toy world; "
        "a pruned model takes its source's)",
    )
