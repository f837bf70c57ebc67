"""Command-line pieces shared by the ``layerprune`` commands (prune, score, eval, sparsify, route): the model,
device and output options, and the wrapper that turns a user's mistake into one line and exit status 2.

A module of its own so that the command modules (``cli``, ``importance.cli``, ``sparsity.cli``, ``routing.cli``)
import it without importing each other. It imports no torch: ``--help`` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

DEFAULT_MODEL = "toy"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--revision``, ``--base-model`` and ``--dtype``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"pipeline to load: a short name ({DEFAULT_MODEL}), a local pipeline folder, or a Hub id "
        f"(default: {DEFAULT_MODEL})",
    )
    from .validation import revision_name

    parser.add_argument(
        "--revision", default=None, type=revision_name, help="Hub revision (branch, tag or commit) of a Hub --model"
    )
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


def model_options(args: argparse.Namespace) -> dict:
    """What :func:`add_model_args` registered beyond ``--model``, as the library functions' keyword arguments
    (``dtype``, ``revision``, ``base_model``)."""
    return dict(dtype=args.dtype, revision=args.revision, base_model=args.base_model)


def add_device_arg(parser: argparse.ArgumentParser, help: str = "torch device (default: cpu)") -> None:
    """``--device`` (default ``None``: the CPU)."""
    parser.add_argument("--device", default=None, help=help)


def add_output_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--output DIR`` (required: the folder to write ``what`` to) and ``--overwrite``."""
    parser.add_argument("--output", required=True, metavar="DIR", help=f"folder to write {what} to")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


PROMPT_SPEC_FORMS = "a .txt/.jsonl/.csv file, a dataset folder, or a Hub dataset as user/name[:config][:split][@column]"
"""The ``--prompts`` forms the commands accept besides built-in names (``data.load_prompts``), for their help."""


def add_prompt_args(
    parser: argparse.ArgumentParser,
    prompts_help: str,
    *,
    num_prompts_default: int | None = None,
    num_prompts_help: str = "use the first N prompts",
) -> None:
    """``--prompts`` (a prompt-set spec; default ``None``: the command's own), ``--prompt-column`` and
    ``--num-prompts``."""
    from .validation import positive_int

    parser.add_argument("--prompts", default=None, help=prompts_help)
    parser.add_argument("--prompt-column", default=None, help="column of --prompts holding the text")
    parser.add_argument("--num-prompts", type=positive_int, default=num_prompts_default, help=num_prompts_help)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, name: str, debug: bool) -> int:
    """Run a parsed command: a :class:`LayerPruneError` or an ``OSError`` (a full disk, a folder without write
    permission) is printed as ``name: error: ...`` on one line and returns 2, Ctrl-C returns 130; with ``debug`` the
    traceback is shown instead."""
    from .errors import LayerPruneError
    from .launch import report_crash, report_error

    try:
        return func(args)
    except LayerPruneError as error:
        if debug:
            raise
        report_error(name, error)  # printed here, or by `layerprune run` when it launched this command
        return 2
    except OSError as error:  # the system's own words, one line
        if debug:
            raise
        where = f": {error.filename}" if getattr(error, "filename", None) else ""
        report_error(name, f"{error.strerror or error}{where}")
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: the traceback follows; a launching `layerprune run` tells it in one line
        report_crash(error)
        raise
