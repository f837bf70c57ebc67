"""The pipeline-level prune / load / save helpers, for every supported family (``diffusers_layerprune.families``).

A pruned transformer is its family's stock class with fewer blocks, renumbered ``0..N-1``, whose config also records
``kept_layers`` (the source block each block came from), ``source_num_layers`` and ``source_model`` (see
``pruned.py``; each family module defines its pruned class, re-exported here by name: ``Pruned<Family>Transformer``).
Folders it saves name the stock class, so stock
diffusers loads them without this package, without a warning (the record is stored under ``_`` names: ``config_record``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from .aliases import ALIAS_FOLDERS, MODEL_ALIASES
from .config_record import expose_record, source_id  # noqa: F401 (source_id: public here before it moved)
from .errors import LayerPruneError, first_line, user_errors
from .families import (
    DEFAULT_FAMILY,
    exported,
    family_of,
    family_of_config,
    family_of_pipeline,
    find_family,
    get_family,
    supported_text,
    tiny_names,
)
from .generation import generate_from_conditioning, generate_from_embeddings  # noqa: F401 (public here before)
from .outputs import atomic_output_dir
from .pruned import PrunedTransformerMixin
from .validation import is_transformer_folder  # noqa: F401 (public here before it moved)
from .validation import resolve_local_model as _resolve_local

# Kept for callers of the first family's API (before there were others).
STOCK_CLASS = ("diffusers", get_family(DEFAULT_FAMILY).transformer_class)


def expose_record_of(model) -> None:
    """Give a model that stock ``from_pretrained`` loaded its kept-block record under the plain names in memory
    (``config.kept_layers``), as the pruned classes have it; saving stores it quietly again (``config_record``)."""
    from diffusers.configuration_utils import FrozenDict

    exposed = expose_record(model.config)
    if exposed != dict(model.config):
        model._internal_dict = FrozenDict(exposed)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------

# Settings a model is meant to be used with, by short name; anything else gets its family's (ModelFamily.defaults). Prompt sets are
# `--prompts` specs (data.load_prompts): blocks are scored on `score_prompts`, distillation trains on
# `train_prompts`, evaluation uses `eval_prompts`; the first two never overlap the third (`layerprune run` checks).
# The toy world's values are those its numbers are measured with (diffusers_layerprune.toy constants).
_TOY_DEFAULTS = dict(
    max_sequence_length=16,
    num_inference_steps=20,
    guidance_scale=4.5,
    score_prompts="toy:train",
    train_prompts="toy:train",
    eval_prompts="toy:heldout",
    scorers=["toy"],
    dtype="float32",
)
GENERATION_DEFAULTS: dict[str, dict] = {
    "toy": _TOY_DEFAULTS,
    # toy-flux has no guidance embedding: its guidance scale (the toy's 4.5) is FluxPipeline's true_cfg_scale against
    # the empty prompt it saw in training (families.flux.true_cfg). Its resolution is given: FluxPipeline's default
    # sample size (128 latents) is Flux.1's, not the model's.
    "toy-flux": {**_TOY_DEFAULTS, "resolution": 32},
    # the tiny random pipelines: the toy's prompts and scorer, few steps, no guidance
    "tiny-random": {**_TOY_DEFAULTS, "num_inference_steps": 4, "guidance_scale": 1.0, "scorers": ["toy"]},
}
for _name, _family in tiny_names().items():  # every other tiny pipeline: the same, at its family's tiny resolution
    if _name != "tiny-random":
        GENERATION_DEFAULTS[_name] = dict(
            GENERATION_DEFAULTS["tiny-random"], resolution=get_family(_family).tiny_resolution
        )
# Kept for callers of the first family's API: its defaults.
PIXART_SIGMA_DEFAULTS = dict(get_family(DEFAULT_FAMILY).defaults)
DTYPES = ("float32", "float16", "bfloat16")
REAL_SIZE_CAPTION_CHANNELS = 4096  # T5-XXL's width: transformers conditioned on it are real-size PixArt-Sigma


def model_defaults(model: str | os.PathLike, source_model: str | None = None) -> dict:
    """Defaults of ``model`` by name, else of its ``source_model`` (a pruned model takes its source's), else its
    family's (``ModelFamily.defaults``; PixArt-Sigma's when the family cannot be read without loading). No pipeline
    is loaded; a local folder's config is read.

    ``dtype`` is the family's (bfloat16) for real-size checkpoints (Hub ids; local folders whose text width is the
    real one) and float32 for small models (the toy world, tiny test pipelines), whose numbers are kept exact."""
    name = str(model)
    if name in GENERATION_DEFAULTS:
        return dict(GENERATION_DEFAULTS[name])
    config = None
    if Path(name).expanduser().is_dir():  # local folders only: no network for defaults
        try:
            config = read_transformer_config(name)
        except LayerPruneError:
            config = None
    if source_model is None:
        source_model = (config or {}).get("source_model")
    family = family_of_config(config) if config is not None else None
    family_defaults = family.defaults if family is not None else PIXART_SIGMA_DEFAULTS
    defaults = dict(GENERATION_DEFAULTS.get(str(source_model), family_defaults))
    if config is not None and str(source_model) not in GENERATION_DEFAULTS:
        if not family.real_size(config):
            defaults["dtype"] = "float32"
    return defaults


def generation_defaults(model: str | os.PathLike, pipe) -> dict:
    """Settings ``model`` is meant to be used with: ``resolution`` (the transformer's native one, ``sample_size x VAE
    scale factor``), ``max_sequence_length``, ``num_inference_steps``, ``guidance_scale``, ``score_prompts``,
    ``train_prompts``, ``eval_prompts``, ``scorers`` and ``dtype``. A pruned model takes its source model's defaults."""
    defaults = model_defaults(model, pipe.transformer.config.get("source_model") or "")
    defaults.setdefault("resolution", family_of(pipe.transformer).native_resolution(pipe))
    return defaults


def scoring_defaults(model: str | os.PathLike) -> dict:
    """``scorer`` (the first of the model's ``scorers``), ``score_prompts`` and ``eval_prompts`` a model's blocks are
    scored with by default; needs no loaded pipeline, so commands can check them before loading anything."""
    defaults = model_defaults(model)
    return {k: defaults[k] for k in ("score_prompts", "eval_prompts")} | {"scorer": defaults["scorers"][0]}


def check_device(device: str | torch.device | None, dtype: torch.dtype | None = None) -> str:
    """``device`` (default ``cpu``) if this machine can run ``dtype`` on it; else one :class:`LayerPruneError` line
    saying what to use instead. Run before any model is loaded."""
    name = str(device or "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as error:
        raise LayerPruneError(f"unknown --device {name!r}; use cpu, cuda or cuda:N") from error
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LayerPruneError(
                f"--device {name}: CUDA is not available to torch {torch.__version__}; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LayerPruneError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise LayerPruneError(
                f"--dtype bfloat16 is not supported by {torch.cuda.get_device_name(dev)}; use float16"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise LayerPruneError(f"--device {name}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise LayerPruneError(f"--device {name}: layerprune runs on cpu, cuda or mps")
    return name


def resolve_dtype(dtype: str | torch.dtype | None, model: str | os.PathLike) -> torch.dtype:
    """``dtype`` as a ``torch.dtype``; ``None`` or ``"auto"`` is the model's default (its source's for a pruned
    model): bfloat16 for PixArt-Sigma, float32 for the toy world."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = model_defaults(model)["dtype"] if dtype in (None, "auto") else str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise LayerPruneError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


def with_transformer(pipe, transformer):
    """A pipeline of the same class sharing every component of ``pipe`` except its transformer."""
    replaced = type(pipe)(**{**pipe.components, "transformer": transformer})
    if pipe.name_or_path:
        replaced.register_to_config(_name_or_path=pipe.name_or_path)
    return replaced


def read_transformer_config(model: str | os.PathLike, *, revision: str | None = None) -> dict | None:
    """The pipeline's ``transformer/config.json`` without loading weights (``None`` for short names built in code).

    Lets commands check block indices and the model family before spending time on loading.
    """
    name = str(model)
    if name in MODEL_ALIASES:
        path = ALIAS_FOLDERS[name]() if name in ALIAS_FOLDERS else None
    else:
        path = _resolve_local(name)
    if revision is not None and (path is not None or name in MODEL_ALIASES):  # would be ignored without a word
        raise LayerPruneError(
            f"--revision {revision} picks a version of a Hub repo; {name} is a local or built-in model: leave it out"
        )
    if path is None and name in MODEL_ALIASES:
        return None
    with user_errors(f"could not read the transformer config of {name!r}", lambda error: _first_line(error, name)):
        if path is not None:
            config_file = path / "config.json" if is_transformer_folder(path) else path / "transformer" / "config.json"
            if not config_file.is_file():
                raise LayerPruneError(
                    f"{name} has no transformer/config.json; layerprune supports pipelines of {supported_text()}"
                )
        else:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(name, "config.json", subfolder="transformer", revision=revision)
        config = expose_record(json.loads(Path(config_file).read_text()))
    family = family_of_config(config, name)
    from .validation import check_transformer_config, check_weights_cover_blocks

    check_transformer_config(config, str(config_file), tuple(stack.depth_key for stack in family.stacks))
    if path is not None:  # local weights: their headers must hold exactly the blocks the config declares
        for stack in family.stacks:
            check_weights_cover_blocks(Path(config_file).parent, config[stack.depth_key], stack.attr)
    return config


def pipeline_folder(model: str | os.PathLike) -> Path | None:
    """The local pipeline folder ``model`` names (a short name's bundled folder too); ``None`` for Hub ids,
    pipelines built in code, and transformer-only folders."""
    name = str(model)
    if name in MODEL_ALIASES:
        return ALIAS_FOLDERS[name]() if name in ALIAS_FOLDERS else None
    path = _resolve_local(name)
    return path if path is not None and (path / "model_index.json").is_file() else None


def check_resolution_for(model: str | os.PathLike, resolution: int | None, config: dict | None) -> None:
    """:func:`validation.check_resolution` with the VAE factor read from ``model``'s folder (before loading)."""
    from .validation import check_resolution, vae_scale_factor_of

    check_resolution(resolution, config, vae_scale_factor_of(pipeline_folder(model)))


def check_not_pickles_only(error: BaseException, name: str, revision: str | None = None) -> None:
    """After a load with ``use_safetensors=True`` failed (the libraries then never open a pickle): refuse in one line
    naming the pickled files when the model (a Hub id, from the cache or the Hub's file list, or a folder) has
    ``.bin`` / ``.pt`` / ``.ckpt`` weights where its ``.safetensors`` should be. Returns for any other failure."""
    from .errors import _chain
    from .validation import PICKLE_SUFFIXES

    text = " ".join(str(e) for e in _chain(error)).lower()
    if "safetensors" not in text:
        return
    files: list[str] = []
    if Path(name).expanduser().is_dir():
        root = Path(name).expanduser()
        files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    else:
        try:
            from huggingface_hub import snapshot_download

            root = Path(snapshot_download(name, revision=revision, local_files_only=True))
            files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        except Exception:  # not in the cache: the Hub's file list
            try:
                from huggingface_hub import list_repo_files

                files = list_repo_files(name, revision=revision)
            except Exception:
                files = []
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        shown = ", ".join(pickles[:3]) + (" ..." if len(pickles) > 3 else "")
        raise LayerPruneError(
            f"{name} has pickled weights ({shown}) where .safetensors belong, which layerprune never loads (opening "
            "a pickle can run code): use a model with .safetensors weights, or convert it where you trust its "
            "source (from_pretrained(...).save_pretrained(...) writes safetensors)"
        ) from error


def _first_line(error: Exception, repo_id: str | None = None) -> str:
    """The first line of ``error``'s message, and for a failed Hub download what fixes it (:func:`hub_error_fix`)."""
    from .errors import hub_error_fix

    # We print no stack trace, so drop the library's pointer to one.
    first = first_line(error)
    first = first.replace(" Please check out the root cause in the stacktrace above.", "")
    fix = hub_error_fix(error, repo_id)
    return fix.replace("REPO", repo_id or "ORG/NAME") if fix else first  # the fix also says what happened


def load_pipeline(
    model: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | None = None,
    revision: str | None = None,
    base_model: str | None = None,
    variant: str | None = None,
    **components,
):
    """Load a pipeline of a supported family from a short name (``tiny-random``, ``tiny-random-flux``), a local folder, or a Hub id (at ``revision``,
    weight files of ``variant`` such as ``fp16`` when given).

    ``components`` (e.g. ``transformer=student`` or ``text_encoder=None``) replace the saved ones without loading them.
    A transformer saved alone (``--transformer-only``) is loaded into its base pipeline: ``base_model``, or the
    ``source_model`` its config records.

    Raises :class:`LayerPruneError` with the fix for a missing path, a folder that is not a pipeline, a Hub id that
    cannot be fetched, or a pipeline whose transformer is not of a supported family.
    """
    from diffusers import DiffusionPipeline

    name = str(model)
    local = None if name in MODEL_ALIASES else _resolve_local(name)
    if base_model is not None and not (local is not None and is_transformer_folder(local)):  # would be ignored
        raise LayerPruneError(
            f"--base-model applies to a --model folder that holds only a transformer; {name} is a whole pipeline: "
            "leave --base-model out"
        )
    if local is not None and is_transformer_folder(local):
        return _load_with_base(local, base_model, torch_dtype=torch_dtype, device=device, **components)
    if name in MODEL_ALIASES:
        pipe = MODEL_ALIASES[name]()
        if components:
            pipe = type(pipe)(**{**pipe.components, **components})
        pipe.register_to_config(_name_or_path=name)
        if torch_dtype is not None and torch_dtype != pipe.dtype:
            pipe.to(dtype=torch_dtype)
    else:
        if local is not None:
            from .validation import check_no_pickled_weights

            check_no_pickled_weights(local)
        try:
            if variant is not None:
                components["variant"] = variant
            pipe = DiffusionPipeline.from_pretrained(
                str(local or name), dtype=torch_dtype, revision=revision, use_safetensors=True, **components
            )
        except Exception as error:  # hub / network / format errors: one line with the cause
            check_not_pickles_only(error, name, revision)
            if local is not None:  # a damaged file is named (the libraries' messages do not all say which)
                from .validation import check_weight_files

                check_weight_files(local)
            raise LayerPruneError(f"could not load pipeline {name!r}: {_first_line(error, name)}") from error
        transformer = getattr(pipe, "transformer", None)
        if "transformer" not in components and find_family(transformer) is not None:
            expose_record_of(transformer)
        if local is not None and "transformer" not in components and find_family(transformer) is not None:
            from .provenance import restore_local_source

            restore_local_source(pipe.transformer, local)
    transformer = getattr(pipe, "transformer", None)
    family_of_pipeline(pipe, name)  # one line naming what it holds and the supported families
    if device is not None:
        pipe.to(device)
    return pipe


def _load_with_base(folder: Path, base_model: str | None, *, torch_dtype=None, device=None, **components):
    """The base pipeline with the transformer saved alone in ``folder``."""
    from .provenance import local_source

    config = expose_record(json.loads((folder / "config.json").read_text()))
    # the saved config names a local source by folder name only; the full path is in the folder's hidden marker
    base = base_model or local_source(folder) or config.get("source_model")
    if not base:
        raise LayerPruneError(
            f"{folder} holds only a transformer and does not record its base pipeline; pass --base-model "
            "(the pipeline it was pruned from, e.g. PixArt-alpha/PixArt-Sigma-XL-2-1024-MS)"
        )
    if "transformer" not in components:
        components["transformer"] = load_transformer(folder, torch_dtype=torch_dtype)
    try:
        pipe = load_pipeline(base, torch_dtype=torch_dtype, device=device, **components)
    except LayerPruneError as error:
        raise LayerPruneError(
            f"{folder} holds only a transformer; loading its base pipeline {base!r} failed ({error}); pass --base-model"
        ) from error
    pipe.register_to_config(_name_or_path=str(folder))
    return pipe


def load_transformer(
    model: str | os.PathLike, *, torch_dtype: torch.dtype | None = None, revision: str | None = None
) -> torch.nn.Module:
    """Only the transformer of ``model`` (short name, pipeline folder, transformer folder or Hub id): pruning needs
    nothing else, and skipping PixArt-Sigma's 4.7B-parameter text encoder saves minutes and ~10-19 GB of memory.

    A pruned transformer (one whose config records ``kept_layers``) loads as its family's pruned class
    (:class:`PrunedPixArtTransformer`, :class:`PrunedFluxTransformer`, ...), any other as the stock class.
    """
    name = str(model)
    if name in MODEL_ALIASES:
        transformer = load_pipeline(name, torch_dtype=torch_dtype).transformer
        transformer.register_to_config(_name_or_path=name)
        return transformer
    config = read_transformer_config(name, revision=revision)
    local = _resolve_local(name)
    folder, subfolder = (local, None) if local is not None and is_transformer_folder(local) else (local, "transformer")
    family = family_of_config(config, name)
    if config.get("kept_layers") is not None:
        cls = family.pruned_class()
    else:
        import diffusers

        cls = getattr(diffusers, family.transformer_class)
    try:
        transformer = cls.from_pretrained(
            str(folder or name), subfolder=subfolder, torch_dtype=torch_dtype, revision=revision, use_safetensors=True
        )
    except LayerPruneError:
        raise
    except Exception as error:
        check_not_pickles_only(error, name, revision)
        raise LayerPruneError(f"could not load the transformer of {name!r}: {_first_line(error, name)}") from error
    if config.get("source_model") is None:  # record where it came from: a Hub id, or the folder
        transformer.register_to_config(_name_or_path=name)
    elif local is not None:
        from .provenance import restore_local_source

        restore_local_source(transformer, local)
    return transformer


def save_pruned_transformer(
    transformer: PrunedTransformerMixin,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save only the transformer (``config.json`` + safetensors at the top of ``output_dir``), the layout a model repo
    that shares just the transformer has: the stock class's ``from_pretrained(output_dir)`` loads it, and
    the pipeline comes from the base model. Atomic, ownership-checked and path-free like :func:`save_pruned_pipeline`."""
    from .provenance import publish_configs

    if not isinstance(transformer, PrunedTransformerMixin):
        raise LayerPruneError(
            f"expected a pruned transformer (a family's pruned class, as prune_pipeline makes), got "
            f"{type(transformer).__name__}"
        )
    source = transformer.config.get("source_model")
    local = {"source_model": source} if source else None
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, kind="transformer", local=local) as tmp:
        transformer.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        publish_configs(tmp)
    return Path(output_dir)


def prune_to_folder(
    model: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    kept_layers: Iterable[int] | None = None,
    pruned_layers: Iterable[int] | None = None,
    transformer_only: bool = False,
    dtype: str | torch.dtype | None = "auto",
    revision: str | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
    inputs: Iterable = (),
) -> PrunedTransformerMixin:
    """Load ``model``, keep (or drop) the given blocks and save the result to ``output_dir``: the whole pipeline, or
    with ``transformer_only`` just the pruned transformer (then only the transformer is loaded). ``dtype`` ``"auto"``
    is the model's (bfloat16 for PixArt-Sigma, float32 for the toy world). Returns the pruned transformer."""
    torch_dtype = resolve_dtype(dtype, model)
    if transformer_only:
        transformer = load_transformer(model, torch_dtype=torch_dtype, revision=revision)
        pruned = (
            family_of(transformer)
            .pruned_class()
            .from_transformer(
                transformer, kept_layers, pruned_layers, source_model=_source_of(model, transformer), copy_weights=False
            )
        )
        extra = _carried_sparsity(model, {"transformer": pruned})
        save_pruned_transformer(pruned, output_dir, overwrite=overwrite, inputs=inputs, extra_files=extra)
        return pruned
    pipe = load_pipeline(model, torch_dtype=torch_dtype, revision=revision, base_model=base_model)
    pruned = prune_pipeline(pipe, kept_layers=kept_layers, pruned_layers=pruned_layers, copy_weights=False)
    extra = _carried_sparsity(model, pruned)
    save_pruned_pipeline(pruned, output_dir, overwrite=overwrite, inputs=inputs, extra_files=extra)
    return pruned.transformer


def _carried_sparsity(model: str | os.PathLike, pruned) -> dict[str, str]:
    """A sparsified source folder's ``sparsity.json``, measured again on the pruned model (whose zeros it keeps)."""
    from .sparsity.record import FILE_NAME, read_sparsity_record

    local = None if str(model) in MODEL_ALIASES else _resolve_local(str(model))
    record = read_sparsity_record(local)
    if record is None:
        return {}
    transformer = pruned["transformer"] if isinstance(pruned, dict) else pruned.transformer
    event = {"action": "prune", "kept_layers": transformer.config.kept_layers}
    return {FILE_NAME: record.remeasured(pruned, event).to_json()}


def _source_of(model: str | os.PathLike, transformer) -> str:
    # a pruned model keeps the source it records; otherwise the model is the source
    return transformer.config.get("source_model") or source_id(str(model)) or str(model)


def prune_pipeline(
    pipe,
    kept_layers: Iterable[int] | None = None,
    pruned_layers: Iterable[int] | None = None,
    *,
    copy_weights: bool = True,
):
    """Return a new pipeline of the same class whose transformer is pruned; other components are shared."""
    transformer = getattr(pipe, "transformer", None)
    family = family_of_pipeline(pipe)
    source = transformer.config.get("source_model") or pipe.name_or_path
    student = family.pruned_class().from_transformer(
        transformer, kept_layers, pruned_layers, source_model=source, copy_weights=copy_weights
    )
    return with_transformer(pipe, student)


def save_pruned_pipeline(
    pipe,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    extra_files: dict[str, str] | None = None,
) -> Path:
    """``save_pretrained`` a pipeline so that stock ``DiffusionPipeline.from_pretrained`` loads it.

    The folder is written next to its destination and moved into place only when complete: a failure leaves no
    half-written folder, and with ``overwrite=True`` the old folder survives until the new one is ready. Only a
    folder this package wrote is replaced, never one of ``inputs`` (see ``outputs.check_output_dir``).
    ``extra_files``: ``{name: text}`` written at the folder's top with the weights (e.g. ``sparsity.json``).

    The saved configs name the source model by its public name (a local path by its folder name); the full local
    path stays in the folder's hidden marker, which ``load_pipeline`` reads back (``provenance``).
    """
    from .provenance import publish_configs

    source = pipe.transformer.config.get("source_model")
    local = {"source_model": source} if source else None
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs, kind="pipeline", local=local) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        index_path = tmp / "model_index.json"
        index = json.loads(index_path.read_text())
        if "transformer" in index and isinstance(pipe.transformer, PrunedTransformerMixin):
            index["transformer"] = ["diffusers", family_of(pipe.transformer).transformer_class]
            index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        publish_configs(tmp)
    return Path(output_dir)


def __getattr__(name: str):
    """Each family's exported names (its pruned class: ``Pruned<Family>Transformer``), importable from here."""
    value = exported(name)
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value


__all__ = [
    "generate_from_conditioning",
    "load_pipeline",
    "load_transformer",
    "save_pruned_transformer",
    "prune_to_folder",
    "prune_pipeline",
    "save_pruned_pipeline",
    "read_transformer_config",
    "MODEL_ALIASES",
]
