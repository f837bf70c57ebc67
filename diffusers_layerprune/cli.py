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
from pathlib import Path

from .arguments import DEFAULT_MODEL, add_device_arg, add_output_args, add_prompt_args, model_options, run_command
from .arguments import add_model_args as _add_model_args
from .validation import non_negative_float, non_negative_int, positive_int, revision_name


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


def _cmd_prune(args: argparse.Namespace) -> int:
    from .importance.cli import check_prune_importance_args, pruned_layers_from_importance
    from .outputs import check_output_dir
    from .provenance import local_inputs

    check_prune_importance_args(args)
    inputs = local_inputs(args.model, args.importance)
    check_output_dir(args.output, overwrite=args.overwrite, inputs=inputs)

    from .errors import LayerPruneError
    from .families import family_of_config
    from .modeling import pipeline_folder, prune_to_folder, read_transformer_config
    from .pruned import check_selection
    from .routing.record import has_routing

    local = pipeline_folder(args.model)
    if local is not None and has_routing(local):  # its router picks blocks of these weights: a pruned copy loses it
        raise LayerPruneError(
            f"{args.model} is a prompt-routed pipeline (routing.json); pruning it would drop its router: prune the "
            "model it was routed from, then route the pruned one (layerprune route --model PRUNED)"
        )
    config = read_transformer_config(args.model, revision=args.revision)
    if config is None:  # short names built in code: the depth is known once built (cheap for those)
        from .modeling import load_transformer

        transformer = load_transformer(args.model)
        config = dict(transformer.config, _class_name=type(transformer).__name__)
    family = family_of_config(config, args.model)
    depths = family.stack_depths(config)
    if args.importance:  # check the indices before loading any weights
        args.drop = pruned_layers_from_importance(args, sum(depths), args.model, family.name)
    check_selection(family, depths, args.keep, args.drop)
    pruned = prune_to_folder(
        args.model,
        args.output,
        kept_layers=args.keep,
        pruned_layers=args.drop,
        transformer_only=args.transformer_only,
        **model_options(args),
        overwrite=args.overwrite,
        inputs=inputs,
    )
    cfg = pruned.config
    print(f"pruned {args.model}: {sum(depths)} -> {len(cfg.kept_layers)} blocks ({str(pruned.dtype)[6:]})")
    print(f"kept blocks:    {cfg.kept_layers}")
    print(f"removed blocks: {pruned.pruned_layers}")
    if len(depths) > 1:  # name each stack's blocks (global indices run over the stacks in execution order)
        names = family.block_names(cfg.get("source_stack_depths") or depths)
        for stack, local in zip(family.stacks, family.split(cfg.kept_layers, cfg.source_stack_depths), strict=True):
            print(f"kept {stack.kind} blocks: {local} ({stack.depth_key}={len(local)})")
        print(f"removed: {', '.join(names[i] for i in pruned.pruned_layers)}")
    print(f"saved {'transformer' if args.transformer_only else 'pipeline'}: {args.output}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_pipeline, grid_path, render_report_md

    if args.no_teacher and (args.teacher or args.no_teacher_cache):  # both would be ignored without a word
        from .errors import LayerPruneError

        flag = "--teacher" if args.teacher else "--no-teacher-cache"
        raise LayerPruneError(f"{flag} sets up the teacher, which --no-teacher leaves out: pass one of them")
    output = Path(args.output) if args.output else _default_report_path(args.model)
    if (Path(args.model).expanduser() / "elastic.json").is_file():  # every trained depth of an elastic run
        from .elastic_eval import cmd_eval_elastic

        return cmd_eval_elastic(args, output)
    report = evaluate_pipeline(
        args.model,
        output=output,
        overwrite=args.overwrite,
        teacher=args.teacher,
        no_teacher=args.no_teacher,
        prompts=args.prompts,
        prompt_column=args.prompt_column,
        num_prompts=args.num_prompts,
        scorers=args.scorers,
        steps=args.steps,
        guidance=args.guidance,
        resolution=args.resolution,
        seed=args.seed,
        batch_size=args.batch_size,
        latency_repeats=args.latency_repeats,
        device=args.device,
        **model_options(args),
        teacher_cache=not args.no_teacher_cache,
    )
    print(render_report_md(report))
    print(f"wrote {output}, {output.with_suffix('.md')} and {grid_path(output)}")
    folder = Path(args.model).expanduser()
    if folder.is_dir() and output.resolve().parent != folder.resolve():  # a local model folder: how to publish it
        print(f"to show it in the model card: layerprune push {args.model} --repo-id USER/NAME --report {output}")
    return 0


def _default_report_path(model: str) -> Path:
    """``<name>-report.json`` in the working directory: never inside the model folder that eval reads."""
    from .provenance import public_name

    return Path(f"{public_name(model).replace('/', '--')}-report.json")


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_pipeline

    result = push_pipeline(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        dry_run=args.dry_run,
        license=args.license,
        base_model=args.base_model,
        transformer_only=args.transformer_only,
        report=args.report,
    )
    total = sum(size for _, size in result["files"])
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"wrote model card {args.folder}/README.md")
    print(f"{verb} {len(result['files'])} files ({total / 2**20:.1f} MiB) to {args.repo_id}:")
    rewritten = dict(result["rewritten"])
    for path, size in result["files"]:
        changes = "; ".join(f"{old} -> {new}" for old, new in dict(rewritten.get(path, [])).items())
        print(f"  {size:>12,d}  {path}" + (f"  (local paths rewritten: {changes})" if changes else ""))
    for path, local in result["left_out"]:
        print(f"left out {path}: it holds a local path ({local}) and cannot be rewritten")
    if result["commit_url"]:
        print(f"commit: {result['commit_url']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .recipe import Recipe, run_recipe

    names = (
        "model",
        "criterion",
        "scorer",
        "prompts",
        "train_prompts",
        "num_prompts",
        "dtype",
        "plan",
        "distill_steps",
        "distill_batch_size",
        "eval_num_prompts",
        "seed",
        "output",
        "repo_id",
        "base_model",
        "num_processes",
        "accelerate_config",
        "mixed_precision",
    )
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    given.update({flag: True for flag in ("use_lora", "use_ema", "push", "transformer_only") if getattr(args, flag)})
    if args.export:
        given["export"] = args.export
    if any(v is not None for v in (args.num_layers, args.remove, args.ratio)):  # a depth flag replaces all three
        given.update(num_layers=args.num_layers, remove=args.remove, ratio=args.ratio)
    if args.elastic_depths is not None:
        given["elastic_depths"] = args.elastic_depths
        if not args.recipe and not {"num_layers", "remove", "ratio"} & set(given):
            given["ratio"] = None  # the pruned depth is the largest elastic depth (a recipe file: from_yaml decides)
    recipe = Recipe.from_yaml(args.recipe, **given) if args.recipe else Recipe(**given)
    run_recipe(recipe, verbose=args.verbose)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .validation import OneLineArgumentParser

    parser = OneLineArgumentParser(
        prog="layerprune",
        description="Depth pruning of diffusion transformers (PixArt-Sigma, Sana, SD3 / SD3.5, Flux.1): score blocks, prune, "
        "distill, evaluate.",
    )
    from . import __version__
    from .export import add_export_parser
    from .importance.cli import add_prune_importance_args, add_score_parser
    from .routing.cli import add_route_parser
    from .sparsity.cli import add_sparsify_parser

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show diffusers/transformers log messages")
    parser.add_argument(
        "--debug", action="store_true", help="show a traceback instead of a one-line error (or LAYERPRUNE_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    prune = sub.add_parser(
        "prune",
        help="remove transformer blocks and save a pipeline that stock diffusers loads",
        description="Remove whole transformer blocks from a PixArt-Sigma, Sana, SD3 or Flux pipeline and save the pruned "
        "pipeline (Flux: one index over its double then single blocks). "
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
    add_output_args(prune, "the pruned pipeline")
    prune.add_argument(
        "--transformer-only",
        action="store_true",
        help="load and save only the transformer (config + safetensors; ~1.2 GB in bfloat16 for PixArt-Sigma-XL): "
        "the text encoder and VAE stay in the base model",
    )
    prune.set_defaults(func=_cmd_prune)
    add_score_parser(sub)
    add_sparsify_parser(sub)
    add_route_parser(sub)
    add_export_parser(sub)
    from .elastic import add_extract_parser, depth_list

    add_extract_parser(sub)
    from .adapters.cli import add_controlnet_parser, add_ip_adapter_parser, add_lora_parsers

    add_lora_parsers(sub)
    add_controlnet_parser(sub)
    add_ip_adapter_parser(sub)

    evaluate = sub.add_parser(
        "eval",
        help="preference scores, parameters, latency and speed-up of a (pruned) pipeline vs its teacher",
        description="Generate with the model and its teacher on the same prompts and seeds; report preference scores "
        "(mean, spread), CLIP score, parameters, transformer latency and speed-up (same run, warm-up and repeats), "
        "and on the toy world the judge's accuracies. Writes report.json, report.md and an image grid.",
    )
    _add_model_args(evaluate)
    add_device_arg(evaluate, "torch device, e.g. cuda (default: cpu)")
    evaluate.add_argument("--teacher", default=None, help="teacher pipeline (default: the model's source_model)")
    evaluate.add_argument("--no-teacher", action="store_true", help="evaluate the model alone")
    add_prompt_args(evaluate, "prompt set: toy:heldout, hpdv2[:style], a file or a dataset")
    evaluate.add_argument("--scorers", default=None, help="comma-separated: hpsv2.1,hpsv2,pickscore,clip,toy or paths")
    evaluate.add_argument("--steps", type=positive_int, default=None, help="inference steps (default: the model's)")
    evaluate.add_argument(
        "--guidance", type=non_negative_float, default=None, help="guidance scale (default: the model's)"
    )
    evaluate.add_argument("--resolution", type=positive_int, default=None, help="image side (default: the model's)")
    evaluate.add_argument("--seed", type=int, default=0, help="prompt i is generated from seed + i")
    evaluate.add_argument("--batch-size", type=positive_int, default=8)
    evaluate.add_argument(
        "--latency-repeats", type=positive_int, default=5, help="timed repeats per model (after warm-up)"
    )
    evaluate.add_argument(
        "--output", default=None, help="report path (default: ./NAME-report.json, never inside the model folder)"
    )
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing report")
    evaluate.add_argument(
        "--no-teacher-cache",
        action="store_true",
        help="generate the teacher's images again even when an earlier evaluation with the same teacher, prompts, "
        "seeds and settings is cached (default: reuse them; the teacher's latency is measured in every run)",
    )
    evaluate.set_defaults(func=_cmd_eval)

    push = sub.add_parser(
        "push",
        help="write a model card and upload a pruned pipeline folder to the Hub",
        description="Render README.md (model card) into the folder from what it records (kept blocks, importance, "
        "distillation recipe, evaluation report) and upload the folder in one commit. The token comes from "
        "`hf auth login` or HF_TOKEN and is never written anywhere. --dry-run touches nothing remote.",
    )
    push.add_argument("folder", metavar="DIR", help="pipeline folder (layerprune prune / train_distill.py output)")
    push.add_argument("--repo-id", required=True, help="user/name or org/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", default=None, type=revision_name, help="branch to push to (created if missing)")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--license", default=None, help="license for the card (default: the base model's, if readable)")
    push.add_argument(
        "--base-model",
        default=None,
        metavar="ORG/NAME",
        help="Hub id of the source model for the card, when it was pruned from a local folder (files name local "
        "sources by folder name only)",
    )
    push.add_argument(
        "--report",
        default=None,
        metavar="JSON",
        help="evaluation report written by layerprune eval (with its .md and grid)",
    )
    push.add_argument("--dry-run", action="store_true", help="write the card and list the files; upload nothing")
    push.add_argument(
        "--transformer-only",
        action="store_true",
        help="upload only the transformer (at the top of the repo) with the card and reports; the text encoder, VAE "
        "and scheduler stay in the base model (set by --base-model or the folder's source)",
    )
    push.set_defaults(func=_cmd_push)

    run = sub.add_parser(
        "run",
        help="the whole recipe: score -> prune -> distill -> eval -> model card (-> push)",
        description="Score the blocks, prune, distil the pruned model from the full one, evaluate before and after "
        "distillation against the teacher, and write the model card; ends with a summary table. Re-running with the "
        "same --output reuses finished stages (settings are recorded in run.json). On the bundled toy world the "
        "defaults finish in about 2.5 minutes on a 2-core CPU.",
    )
    run.add_argument("--recipe", default=None, metavar="YAML", help="recipe file with the same fields as the flags")
    run.add_argument("--model", default=None, help=f"pipeline to prune (default: {DEFAULT_MODEL})")
    run.add_argument("--criterion", default=None, help="importance criterion (default: preference)")
    run.add_argument("--scorer", default=None, help="preference scorer (default: the model's)")
    run.add_argument(
        "--prompts",
        default=None,
        help="prompts for scoring (default: the model's: toy:train; Pick-a-Pic's unique validation prompts for "
        "PixArt-Sigma); evaluation prompts are always removed from them",
    )
    run.add_argument(
        "--train-prompts",
        default=None,
        help="prompts for distillation (default: the model's: toy:train; Pick-a-Pic train prompts for PixArt-Sigma)",
    )
    run.add_argument(
        "--dtype",
        default=None,
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights dtype of every stage and saved folder (default: auto, bfloat16 for PixArt-Sigma, float32 toy)",
    )
    run.add_argument("--num-prompts", type=positive_int, default=None, help="prompts used for scoring (default: 64)")
    depth = run.add_mutually_exclusive_group()
    depth.add_argument(
        "--num-layers", type=int, default=None, metavar="N", help="pruned depth: blocks to keep (config.num_layers)"
    )
    depth.add_argument("--remove", type=int, default=None, metavar="N", help="blocks to remove")
    depth.add_argument(
        "--ratio", type=float, default=None, metavar="R", help="fraction of blocks to remove (default: 0.25)"
    )
    run.add_argument(
        "--elastic-depths",
        type=depth_list,
        default=None,
        metavar="D1,D2,...",
        help="distil these nested depths in one run, largest first (e.g. 9,7; docs/elastic.md): the pruned model is "
        "the largest, every smaller depth is extracted into OUTPUT/depth-N, and every depth is evaluated",
    )
    run.add_argument("--plan", default=None, help="one_shot (default), greedy or span")
    run.add_argument(
        "--distill-steps", type=non_negative_int, default=None, help="distillation steps; 0 skips (default: 300)"
    )
    run.add_argument("--use-lora", action="store_true", help="distil LoRA adapters instead of all weights")
    run.add_argument(
        "--use-ema", action="store_true", help="distil with an EMA of the student's weights (saved and evaluated)"
    )
    run.add_argument(
        "--num-processes",
        type=positive_int,
        default=None,
        metavar="N",
        help="processes for distillation and scoring, started with accelerate launch (one per GPU; on a CPU-only "
        "machine gloo processes) (default: your accelerate config's, else one per GPU, else 1); --distill-batch-size "
        "is the global batch, split over them",
    )
    run.add_argument(
        "--accelerate-config",
        default=None,
        metavar="FILE",
        help="accelerate config file for the launched stages (multi-GPU, FSDP, DeepSpeed; `accelerate config "
        "--config_file FILE` writes one) (default: accelerate's default config, if any)",
    )
    run.add_argument(
        "--mixed-precision",
        default=None,
        choices=["no", "fp16", "bf16"],
        help="mixed precision of distillation (default: the accelerate config's, else no)",
    )
    run.add_argument(
        "--distill-batch-size",
        type=positive_int,
        default=None,
        metavar="B",
        help="global distillation batch, split over --num-processes (default: 16)",
    )
    run.add_argument(
        "--transformer-only",
        action="store_true",
        help="pruned/ and distilled/ hold only the transformer (text encoder and VAE stay in --model); the card "
        "shows how to load it into the base pipeline",
    )
    run.add_argument(
        "--eval-num-prompts", type=positive_int, default=None, help="held-out prompts to evaluate (default: 200)"
    )
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--output", default=None, metavar="DIR", help="run folder (default: runs/toy)")
    run.add_argument("--repo-id", default=None, help="Hub repo for the card's usage snippet and --push")
    run.add_argument("--push", action="store_true", help="upload the final model with its card")
    run.add_argument(
        "--export",
        action="append",
        default=None,
        metavar="FORMAT[:TYPE]",
        help="also write the final transformer as one file beside it, listed in the card and uploaded with it: "
        "gguf:Q8_0, gguf:Q4_0, single-file, single-file:BF16 ... (repeatable; see layerprune export)",
    )
    run.add_argument(
        "--base-model",
        default=None,
        metavar="ORG/NAME",
        help="Hub id of --model for the card, when --model is a local folder",
    )
    run.set_defaults(func=_cmd_run)
    return parser


def _quiet_library_logs() -> None:
    # diffusers/transformers log hub retries and config notes as warnings, and show loading bars; our own message
    # says what went wrong, and each stage shows one bar.
    from .quiet import quiet_libraries

    quiet_libraries()


def main(argv: Sequence[str] | None = None) -> int:
    from .launch import follow_parent
    from .validation import check_model_path, debug_enabled

    follow_parent()  # started by `layerprune run` under accelerate launch: stop with it

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a one-line argument error (status 2)
        return done.code if isinstance(done.code, int) else 2
    if not args.verbose:
        _quiet_library_logs()
    debug = args.debug or debug_enabled([])

    def checked(args: argparse.Namespace) -> int:
        # a mistyped model path costs nothing: refused before torch and diffusers are imported (~12 CPU-seconds)
        check_model_path(getattr(args, "model", None))
        return args.func(args)

    return run_command(checked, args, f"layerprune {args.command}", debug)


if __name__ == "__main__":
    sys.exit(main())
