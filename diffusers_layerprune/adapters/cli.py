"""``layerprune adapt-lora`` (a parent's LoRA on a pruned model), ``layerprune convert-lora`` (a LoRA folder of an
earlier ``train_distill`` in the format stock loaders read), ``layerprune adapt-controlnet`` (a parent's ControlNet
on a pruned model) and ``layerprune adapt-ip-adapter`` (a parent's IP-Adapter on a pruned model)."""

from __future__ import annotations

import argparse


def add_adapt_args(parser: argparse.ArgumentParser, source: str, what: str, *, weight_name: bool = True) -> None:
    """The options every ``adapt-*`` command shares: ``--pruned``, ``--output`` / ``--overwrite`` (``arguments``),
    ``--revision`` of the ``source`` on the Hub and, for single-file adapters, ``--weight-name``."""
    from ..arguments import add_output_args

    parser.add_argument("--pruned", required=True, metavar="FOLDER", help="the pruned pipeline or transformer folder")
    parser.add_argument("--revision", default=None, help=f"Hub revision of {source}")
    if weight_name:
        parser.add_argument(
            "--weight-name", default=None, metavar="NAME", help=f"the weight file in a {source} folder or repo"
        )
    add_output_args(parser, what)


def adapt_options(args: argparse.Namespace) -> dict:
    """The shared options :func:`add_adapt_args` registered, as keyword arguments of the ``adapt_*`` functions."""
    options = dict(revision=args.revision, overwrite=args.overwrite)
    if "weight_name" in args:
        options["weight_name"] = args.weight_name
    return options


def add_lora_parsers(subparsers) -> None:
    """Register ``adapt-lora`` and ``convert-lora`` on the CLI's subparsers."""
    adapt = subparsers.add_parser(
        "adapt-lora",
        help="carry a LoRA trained on the parent model over to a pruned model (exact on the kept blocks)",
        description="Renumber a parent model's LoRA to the blocks a pruned model kept and drop its layers in removed "
        "blocks. The result loads with stock tools: pipe.load_lora_weights(OUTPUT) (Sana, SD3, Flux), or "
        "peft.PeftModel.from_pretrained(pipe.transformer, OUTPUT) (PixArt), and gives exactly what the parent "
        "with the LoRA fused, then pruned, gives. Prints the layers kept and dropped and the share of the LoRA's "
        "weight-change norm (sum over layers of ||scale*B@A||_F) that lived in removed blocks; "
        "OUTPUT/layerprune_lora.json records the source LoRA (name, Hub revision, sha256).",
    )
    adapt.add_argument(
        "lora",
        metavar="LORA",
        help="the parent's LoRA: a .safetensors file, a folder (diffusers or peft) or a Hub id; layouts the "
        "family's load_lora_weights converts (kohya, original keys for Flux) are read too",
    )
    add_adapt_args(adapt, "LORA", "the adapted LoRA")
    adapt.set_defaults(func=cmd_adapt_lora)

    convert = subparsers.add_parser(
        "convert-lora",
        help="rewrite a LoRA folder of an earlier train_distill --use_lora so that stock loaders read it",
        description="Earlier versions of train_distill wrote OUTPUT_DIR/lora without the transformer. key prefix "
        "(pipe.load_lora_weights loaded nothing from it) and checkpoints' transformer_lora/ without rank and alpha. "
        "This writes them as the current version does.",
    )
    convert.add_argument("old", metavar="OLD", help="the old lora/ or checkpoint-N/transformer_lora/ folder")
    convert.add_argument("--output", required=True, metavar="NEW", help="new folder for the converted LoRA")
    convert.add_argument(
        "--model",
        default=None,
        metavar="FOLDER",
        help="the pruned model the LoRA was trained on (default: the training output around OLD)",
    )
    convert.add_argument("--overwrite", action="store_true", help="replace a NEW folder layerprune wrote")
    convert.set_defaults(func=cmd_convert_lora)


def cmd_adapt_lora(args: argparse.Namespace) -> int:
    from .lora import adapt_lora_to_folder

    adapt_lora_to_folder(args.lora, args.pruned, args.output, **adapt_options(args), log=print)
    print(f"saved: {args.output}")
    return 0


def cmd_convert_lora(args: argparse.Namespace) -> int:
    from .lora import convert_old_lora

    convert_old_lora(args.old, args.output, model=args.model, overwrite=args.overwrite)
    print(f"saved: {args.output}")
    return 0


def add_controlnet_parser(subparsers) -> None:
    """Register ``adapt-controlnet`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "adapt-controlnet",
        help="rewrite a parent's Flux / SD3 / Sana ControlNet so that the stock pipeline feeds each kept block its "
        "parent residual (exact)",
        description="Stock ControlNet pipelines pick each transformer block's residual by arithmetic on the "
        "transformer's depth, so on a pruned model the residuals land on other blocks. This writes a ControlNet "
        "(stock class, stock loading) whose residuals reach every kept block exactly as in the parent "
        "(docs/controlnet.md); OUTPUT/controlnet_adaptation.json records the source and the plan. Refuses in one "
        "line where no exact remap exists.",
    )
    parser.add_argument("controlnet", metavar="CONTROLNET", help="the parent's ControlNet: a folder or a Hub id")
    add_adapt_args(parser, "CONTROLNET", "the rewritten ControlNet", weight_name=False)
    parser.set_defaults(func=cmd_adapt_controlnet)


def cmd_adapt_controlnet(args: argparse.Namespace) -> int:
    from .controlnet import adapt_controlnet

    result = adapt_controlnet(args.controlnet, args.pruned, args.output, **adapt_options(args))
    for line in result.summary():
        print(line)
    print(f"saved: {args.output} (load it with {result.family.controlnet.model_class}.from_pretrained)")
    return 0


def add_ip_adapter_parser(subparsers) -> None:
    """Register ``adapt-ip-adapter`` on the CLI's subparsers."""
    from .ip_adapter import RECORD_NAME, WEIGHT_NAME

    adapt = subparsers.add_parser(
        "adapt-ip-adapter",
        help="carry an IP-Adapter made for the parent model over to a pruned model (Flux.1, SD3; exact on kept blocks)",
        description="diffusers' load_ip_adapter numbers IP-Adapter layers by the transformer's attention processors, "
        "so on a pruned Flux the kept blocks silently get the parent's first blocks' layers and on a pruned SD3 "
        "loading fails. This keeps the image projection and the layers of the kept blocks, renumbered, and writes "
        f"OUTPUT/{WEIGHT_NAME}: load it with pipe.load_ip_adapter(OUTPUT, weight_name='{WEIGHT_NAME}', ...) and the "
        "pruned model computes what the parent with the IP-Adapter computes with the removed blocks skipped. "
        f"OUTPUT/{RECORD_NAME} records the source (name, Hub revision, sha256).",
    )
    adapt.add_argument(
        "ip_adapter",
        metavar="IP_ADAPTER",
        help="the parent's IP-Adapter: a .safetensors or .bin file, a folder or a Hub id (diffusers layout; XLabs' "
        "Flux layout is read too)",
    )
    add_adapt_args(adapt, "IP_ADAPTER", "the adapted IP-Adapter")
    adapt.set_defaults(func=cmd_adapt_ip_adapter)


def cmd_adapt_ip_adapter(args: argparse.Namespace) -> int:
    from .ip_adapter import WEIGHT_NAME, adapt_ip_adapter_to_folder

    adapt_ip_adapter_to_folder(args.ip_adapter, args.pruned, args.output, **adapt_options(args), log=print)
    print(f"saved: {args.output}/{WEIGHT_NAME} (pipe.load_ip_adapter({args.output!r}, weight_name={WEIGHT_NAME!r}))")
    return 0
