"""``layerprune export``: a pruned transformer as ONE file in its family's original checkpoint layout, the file
ComfyUI, Forge and diffusers' ``from_single_file`` read: safetensors (``--format single-file``) or GGUF
(``--format gguf``, written with the ``gguf`` package that llama.cpp and ComfyUI-GGUF use).

The layout of each family lives in ``families/<name>.py`` (:class:`~diffusers_layerprune.families.base.SingleFileLayout`);
this module plans the file (every check before any write), converts tensor by tensor and writes to a temporary name
that is renamed into place only when complete. Read back without this package::

    FluxTransformer2DModel.from_single_file(FILE, config=FOLDER, subfolder="transformer")
    FluxTransformer2DModel.from_single_file(GGUF, config=FOLDER, subfolder="transformer",
                                           quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))

The file's metadata (safetensors header / GGUF key-values) records the source model, the kept blocks and the tool
version under ``layerprune.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LayerPruneError

FORMATS = {"single-file": ".safetensors", "gguf": ".gguf"}
# --quant values: GGUF block quantizations (GGUF only) and float types (both formats).
BLOCK_QUANTS = ("Q8_0", "Q5_0", "Q4_0")
FLOAT_TYPES = ("F16", "BF16")
QUANT_TYPES = BLOCK_QUANTS + FLOAT_TYPES
DEFAULT_GGUF_QUANT = "Q8_0"
# Tensors with at most this many values stay F32 in a GGUF file, as ComfyUI-GGUF's converter leaves them: quantizing
# them saves nothing and costs precision.
SMALL_TENSOR = 1024
F16_MAX = 65504.0
# Room kept free beyond the file's own size (headers, alignment padding, the file system's own needs).
DISK_MARGIN = 64 * 2**20


@dataclass
class ExportPlan:
    """Everything decided before a byte is written: what goes where, in which type, and how large it is.

    Attributes:
        folder: the pruned pipeline (or transformer-only) folder given.
        weights_dir: the folder holding the transformer's ``config.json`` and safetensors.
        fmt: ``single-file`` or ``gguf``.
        quant: the ``--quant`` type, or ``None`` (single file: the weights' own dtype).
        family: the :class:`~diffusers_layerprune.families.ModelFamily`.
        config: the transformer config (kept blocks under their plain names).
        pieces: original key -> :class:`~diffusers_layerprune.families.base.Piece`, in file order.
        shapes: original key -> shape.
        types: original key -> the type written (``F32``, ``Q8_0``, ... for GGUF; a torch dtype name otherwise).
        linear_weights: diffusers keys that are ``nn.Linear`` weights (the only tensors GGUF loaders in diffusers
            can keep quantized).
        size: estimated file size in bytes.
    """

    folder: Path
    weights_dir: Path
    fmt: str
    quant: str | None
    family: object
    config: dict
    pieces: dict
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    linear_weights: frozenset[str] = frozenset()
    size: int = 0

    def metadata(self) -> dict[str, str]:
        """The ``layerprune.*`` records kept in the file (values as strings; lists as JSON)."""
        from . import __version__

        config = self.config
        data = {
            "layerprune.version": __version__,
            "layerprune.family": self.family.name,
            "layerprune.source_model": str(config.get("source_model") or ""),
            "layerprune.kept_layers": json.dumps(list(config.get("kept_layers") or [])),
            "layerprune.source_num_layers": str(config.get("source_num_layers") or ""),
            "layerprune.layout": self.family.single_file.converter,
        }
        if config.get("source_stack_depths"):
            data["layerprune.source_stack_depths"] = json.dumps(list(config["source_stack_depths"]))
        return {key: value for key, value in data.items() if value}


def weights_dir_of(folder: Path) -> Path:
    from .validation import is_transformer_folder

    return folder if is_transformer_folder(folder) else folder / "transformer"


def weight_files(weights_dir: Path) -> list[Path]:
    index = weights_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [weights_dir / name for name in names]
    single = weights_dir / "diffusion_pytorch_model.safetensors"
    if single.is_file():
        return [single]
    raise LayerPruneError(
        f"{weights_dir} holds no diffusion_pytorch_model.safetensors; export reads safetensors weights "
        "(save the folder with safe_serialization=True)"
    )


def _headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """key -> (file, shape, safetensors dtype name), read from the headers only."""
    from safetensors import safe_open

    out = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                out[key] = (path, tuple(part.get_shape()), part.get_dtype())
    return out


def _linear_weight_keys(family, config: Mapping) -> frozenset[str]:
    """The diffusers keys of ``nn.Linear`` weights, found on a weightless (meta) copy of the model."""
    import torch
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = family.pruned_class().from_config(dict(config))
    return frozenset(f"{name}.weight" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear))


def _check_choice(fmt: str, quant: str | None) -> str | None:
    if fmt not in FORMATS:
        raise LayerPruneError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if quant is not None and quant not in QUANT_TYPES:
        raise LayerPruneError(f"unknown quantization type {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    if fmt == "single-file" and quant in BLOCK_QUANTS:
        raise LayerPruneError(
            f"--quant {quant} is a GGUF block quantization; use --format gguf (a single safetensors file takes "
            f"{' or '.join(FLOAT_TYPES)})"
        )
    return DEFAULT_GGUF_QUANT if fmt == "gguf" and quant is None else quant


def parse_export_spec(spec: str) -> tuple[str, str | None]:
    """``gguf:Q8_0`` / ``gguf`` / ``single-file`` / ``single-file:BF16`` -> ``(format, quant)``."""
    fmt, _, quant = str(spec).partition(":")
    quant = _check_choice(fmt, quant or None)
    return fmt, quant


def export_file_name(fmt: str, quant: str | None) -> str:
    """The name an exported file takes beside the pipeline (``transformer-Q8_0.gguf``, ``transformer.safetensors``):
    top-level files, which ``DiffusionPipeline.from_pretrained`` neither reads nor downloads."""
    return f"transformer{'-' + quant if quant else ''}{FORMATS[fmt]}"


def exported_files(folder: str | os.PathLike) -> list[Path]:
    """The exported files beside a pipeline (``transformer*.gguf`` / ``transformer*.safetensors`` at its top)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("transformer*") if p.is_file() and p.suffix in FORMATS.values())


def check_exportable(config: Mapping, where: str) -> None:
    """Refuse, before any work, a model whose family (or width) cannot be read back from one file."""
    from .families import family_of_config

    family = family_of_config(config, where)
    if family.single_file is None:
        raise LayerPruneError(f"{family.title} cannot be exported as one file: {family.single_file_refusal}")
    reason = family.single_file.check(config)
    if reason:
        raise LayerPruneError(f"{where} cannot be exported as one file: {reason}")


def check_export_output(output: str | os.PathLike, fmt: str) -> Path:
    """Refuse an output that exists, is a link, has the wrong suffix for ``fmt`` or whose folder cannot be written."""
    from .outputs import check_not_symlink, check_output_parent

    path = Path(output).expanduser()
    check_not_symlink(path)
    if path.suffix != FORMATS[fmt]:
        raise LayerPruneError(
            f"--output {output} should end in {FORMATS[fmt]} for --format {fmt} (loaders pick the reader by suffix)"
        )
    if path.exists():
        raise LayerPruneError(f"output file {output} already exists; choose a new file name (nothing was written)")
    check_output_parent(path)
    return path


def plan_export(folder: str | os.PathLike, fmt: str, quant: str | None = None) -> ExportPlan:
    """Check ``folder`` (a pipeline or transformer folder pruned by this package) and decide every tensor of the
    file; reads configs and safetensors headers, no weights. Raises :class:`LayerPruneError` on any mistake."""
    from .families import family_of_config
    from .modeling import read_transformer_config

    quant = _check_choice(fmt, quant)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LayerPruneError(f"{folder} is not a folder; give the pruned pipeline folder `layerprune prune` wrote")
    config = read_transformer_config(folder)
    family = family_of_config(config, str(folder))
    if not config.get("kept_layers"):
        raise LayerPruneError(
            f"{folder} was not pruned by layerprune (its transformer config records no kept_layers); prune it first "
            "with `layerprune prune`"
        )
    check_exportable(config, str(folder))
    layout = family.single_file
    weights_dir = weights_dir_of(folder)
    headers = _headers(weight_files(weights_dir))
    pieces = layout.pieces(config, list(headers))
    used = [source for piece in pieces.values() for source in piece.sources]
    left = sorted(set(headers) - set(used))
    unknown = sorted(set(used) - set(headers))
    if left or unknown:
        what = f"{left[0]} (and {len(left) - 1} more) has no place" if left else f"{unknown[0]} is missing"
        raise LayerPruneError(
            f"{folder} cannot be exported in {family.title}'s original layout: {what} in the file diffusers' "
            f"{layout.converter} reads; share the folder instead"
        )
    plan = ExportPlan(folder, weights_dir, fmt, quant, family, dict(config), pieces)
    plan.linear_weights = _linear_weight_keys(family, config) if fmt == "gguf" else frozenset()
    for key, piece in pieces.items():
        if piece.fill is not None:
            shape, dtype = piece.fill, "F32"
        else:
            first = headers[piece.sources[0]]
            rows = sum(headers[s][1][0] for s in piece.sources)
            shape, dtype = (rows, *first[1][1:]), first[2]
        plan.shapes[key] = shape
        plan.types[key] = _tensor_type(plan, piece, shape, dtype)
    plan.size = sum(_bytes(plan.shapes[k], plan.types[k], fmt) for k in pieces) + 2**20 + 64 * len(pieces)
    return plan


def _tensor_type(plan: ExportPlan, piece, shape: tuple[int, ...], dtype: str) -> str:
    """The type a tensor is written in. Single file: ``--quant`` (F16 / BF16) for floating tensors, else as stored.
    GGUF: the block quantization only for ``nn.Linear`` weights whose rows split into whole blocks (diffusers
    dequantizes nothing else; ComfyUI-GGUF reads either); 1-D and small tensors F32; other large tensors F16."""
    import gguf

    numel = 1
    for n in shape:
        numel *= n
    floating = dtype in ("F32", "F16", "BF16", "F64")
    if plan.fmt == "single-file":
        return plan.quant if plan.quant and floating else dtype
    if not floating or len(shape) == 1 or numel <= SMALL_TENSOR:
        return "F32"
    linear = piece.sources and all(s in plan.linear_weights for s in piece.sources)
    if linear and len(shape) == 2:
        block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[plan.quant]]
        if shape[-1] % block == 0:
            return plan.quant
    # diffusers keeps a BF16 GGUF tensor packed unless an nn.Linear reads it: other tensors go as F16 (F32 if a value
    # does not fit F16, decided when the tensor is written)
    return "F16"


def _bytes(shape: tuple[int, ...], qtype: str, fmt: str) -> int:
    numel = 1
    for n in shape:
        numel *= n
    if fmt == "gguf":
        import gguf

        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
        return numel // block * size
    return numel * {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}.get(qtype, 8)


def _check_disk(path: Path, needed: int) -> None:
    parent = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    free = shutil.disk_usage(parent).free
    if needed + DISK_MARGIN > free:
        raise LayerPruneError(
            f"{path.name} needs about {needed / 2**30:.2f} GiB but {parent} has {free / 2**30:.2f} GiB free; free "
            "some space or write elsewhere (nothing was written)"
        )


def original_state_dict(family, config: Mapping, state: Mapping):
    """``state`` (a diffusers state dict of ``family``'s transformer) in the family's original layout, tensor by
    tensor: yields ``(original key, tensor)``."""
    import torch

    for key, piece in family.single_file.pieces(config, list(state)).items():
        yield key, _build(piece, lambda name: state[name], torch)


def _build(piece, get, torch):
    if piece.fill is not None:
        return torch.zeros(piece.fill)
    tensor = torch.cat([get(source) for source in piece.sources])
    if piece.swap_halves:
        first, second = tensor.chunk(2)
        tensor = torch.cat([second, first])
    return tensor.contiguous()


def export_transformer(
    folder: str | os.PathLike, output: str | os.PathLike, *, fmt: str = "single-file", quant: str | None = None
) -> Path:
    """Write the pruned transformer of ``folder`` to ``output`` as one file (see the module docstring).

    ``fmt``: ``single-file`` (safetensors) or ``gguf``; ``quant``: ``Q8_0`` / ``Q5_0`` / ``Q4_0`` (GGUF only;
    default ``Q8_0``), ``F16`` / ``BF16`` (either format). Every check (folder, family, layout, output, free disk)
    runs before anything is written; the file is written under a temporary name and renamed when complete.
    Returns the output path."""
    _check_choice(fmt, quant)
    path = check_export_output(output, fmt)
    plan = plan_export(folder, fmt, quant)
    _check_disk(path, plan.size)
    from .outputs import atomic_output_file

    with atomic_output_file(path, overwrite=False) as tmp:
        (_write_gguf if fmt == "gguf" else _write_safetensors)(plan, tmp)
    return path


def _source_tensors(plan: ExportPlan):
    from contextlib import ExitStack

    from safetensors import safe_open

    stack = ExitStack()
    handles = [stack.enter_context(safe_open(p, framework="pt")) for p in weight_files(plan.weights_dir)]
    where = {key: h for h in handles for key in h.keys()}
    return stack, lambda key: where[key].get_tensor(key)


def _write_safetensors(plan: ExportPlan, tmp: Path) -> None:
    import torch
    from safetensors.torch import save_file

    dtypes = {"F16": torch.float16, "BF16": torch.bfloat16}
    stack, get = _source_tensors(plan)
    with stack:
        tensors = {}
        for key, piece in plan.pieces.items():
            tensor = _build(piece, get, torch)
            if plan.types[key] in dtypes:
                tensor = tensor.to(dtypes[plan.types[key]])
            tensors[key] = tensor
    save_file(tensors, str(tmp), metadata={"format": "pt", **plan.metadata()})


def _write_gguf(plan: ExportPlan, tmp: Path) -> None:
    import gguf
    import numpy as np
    import torch

    file_types = {
        "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
        "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
        "F16": gguf.LlamaFileType.MOSTLY_F16,
        "BF16": gguf.LlamaFileType.MOSTLY_BF16,
    }
    writer = gguf.GGUFWriter(str(tmp), arch=plan.family.single_file.gguf_arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(file_types[plan.quant])
    for key, value in plan.metadata().items():
        if key in ("layerprune.kept_layers", "layerprune.source_stack_depths"):
            writer.add_array(key, json.loads(value))
        else:
            writer.add_string(key, value)
    stack, get = _source_tensors(plan)
    with stack:
        for key, piece in plan.pieces.items():
            array = _build(piece, get, torch).float().numpy()
            qtype = plan.types[key]
            if qtype == "F16" and np.abs(array).max(initial=0.0) > F16_MAX:
                qtype = "F32"  # a value F16 cannot hold
            kind = gguf.GGMLQuantizationType[qtype]
            writer.add_tensor(key, gguf.quants.quantize(array, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def read_file_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``layerprune.*`` records of an exported file (safetensors or GGUF)."""
    path = Path(path)
    if path.suffix == ".gguf":
        import gguf

        reader = gguf.GGUFReader(str(path))
        out = {}
        for name, kv in reader.fields.items():
            if name.startswith("layerprune."):
                value = kv.contents()
                out[name] = json.dumps(value) if isinstance(value, list) else str(value)
        return out
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if k.startswith("layerprune.")}


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``layerprune export`` on the CLI's subparsers."""
    parser = subparsers.add_parser(
        "export",
        help="write a pruned transformer as one file (original layout): safetensors or GGUF",
        description="Write the pruned transformer of FOLDER as one file in its family's original checkpoint layout "
        "(the original block names, renumbered contiguously), the file ComfyUI, Forge and diffusers' "
        "from_single_file read. Load it with the family's stock transformer class: "
        "<Class>.from_single_file(FILE, config=FOLDER, subfolder='transformer'); a GGUF file with "
        "quantization_config=GGUFQuantizationConfig(compute_dtype=...). Families without a layout here are refused "
        "with the reason (docs/families.md lists them).",
    )
    parser.add_argument("folder", metavar="FOLDER", help="a pipeline (or transformer) folder `layerprune prune` wrote")
    parser.add_argument("--format", dest="fmt", required=True, choices=list(FORMATS), help="single-file or gguf")
    parser.add_argument(
        "--quant",
        default=None,
        metavar="TYPE",
        help=f"{', '.join(QUANT_TYPES)}: GGUF block quantization of the Linear weights ({', '.join(BLOCK_QUANTS)}; "
        f"GGUF default {DEFAULT_GGUF_QUANT}; norms, biases and small tensors stay F32) or a float type for every "
        "weight (single file default: as stored)",
    )
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="the file to write (.safetensors or .gguf; must not exist)"
    )
    parser.set_defaults(func=_cmd_export)
    return parser


def _cmd_export(args: argparse.Namespace) -> int:
    _check_choice(args.fmt, args.quant)
    check_export_output(args.output, args.fmt)
    path = export_transformer(args.folder, args.output, fmt=args.fmt, quant=args.quant)
    meta = read_file_metadata(path)
    kind = args.fmt if args.fmt == "single-file" else f"gguf {args.quant or DEFAULT_GGUF_QUANT}"
    print(f"wrote {path} ({kind}, {path.stat().st_size / 2**20:.1f} MiB, kept blocks {meta['layerprune.kept_layers']})")
    return 0
