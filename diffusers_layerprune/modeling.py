"""``PrunedPixArtTransformer`` and the pipeline-level prune / load / save helpers.

A pruned transformer is a stock ``PixArtTransformer2DModel`` with fewer blocks, renumbered ``0..N-1``, whose config
also records ``kept_layers`` (the source block each block came from), ``source_num_layers`` and ``source_model``.
Folders it saves name the stock class, so stock diffusers loads them without this package (the extra config keys
are kept, with one warning).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin

from .blocks import block_layout, resolve_kept_layers
from .data import PICKAPIC_SCORING_PROMPTS, PICKAPIC_TRAINING_PROMPTS
from .errors import LayerPruneError
from .outputs import atomic_output_dir

STOCK_CLASS = ("diffusers", "PixArtTransformer2DModel")


class PrunedPixArtTransformer(PixArtTransformer2DModel, PeftAdapterMixin):
    """A depth-pruned PixArt transformer that remembers which source blocks it kept.

    Build one with :meth:`from_transformer`; load one with ``from_pretrained``. Block ``i`` of this model is block
    ``config.kept_layers[i]`` of the source model. ``PeftAdapterMixin`` adds ``add_adapter`` / ``fuse_lora`` /
    ``save_lora_adapter``, which diffusers does not give PixArt.

    Extra config args:
        kept_layers: source block index of each block, strictly increasing, ``len == num_layers``.
        source_num_layers: depth of the unpruned source model.
        source_model: hub id or path of the source model, when known.
    """

    # Every parent __init__ parameter is redeclared: diffusers' config round trip needs explicit parameters.
    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 128,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | None = None,
        use_additional_conditions: bool | None = None,
        caption_channels: int | None = None,
        attention_type: str | None = "default",
        kept_layers: list[int] | None = None,
        source_num_layers: int | None = None,
        source_model: str | None = None,
    ):
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=out_channels,
            num_layers=num_layers,
            dropout=dropout,
            norm_num_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            attention_bias=attention_bias,
            sample_size=sample_size,
            patch_size=patch_size,
            activation_fn=activation_fn,
            num_embeds_ada_norm=num_embeds_ada_norm,
            upcast_attention=upcast_attention,
            norm_type=norm_type,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            interpolation_scale=interpolation_scale,
            use_additional_conditions=use_additional_conditions,
            caption_channels=caption_channels,
            attention_type=attention_type,
        )
        if kept_layers is not None:
            _check_kept_layers(list(kept_layers), num_layers, source_num_layers)

    @property
    def pruned_layers(self) -> list[int] | None:
        """Source block indices that were removed (``None`` when the source depth is unknown)."""
        kept, total = self.config.kept_layers, self.config.source_num_layers
        if kept is None or total is None:
            return None
        return [i for i in range(total) if i not in set(kept)]

    @classmethod
    def from_transformer(
        cls,
        transformer: PixArtTransformer2DModel,
        kept_layers: Iterable[int] | None = None,
        pruned_layers: Iterable[int] | None = None,
        *,
        source_model: str | None = None,
        copy_weights: bool = True,
    ) -> PrunedPixArtTransformer:
        """Build a pruned transformer from ``transformer`` keeping (or dropping) the given block indices.

        Args:
            transformer: a ``PixArtTransformer2DModel`` (a ``PrunedPixArtTransformer`` too: indices then refer to
                its blocks, and ``kept_layers`` is recorded in the original source's numbering).
            kept_layers / pruned_layers: exactly one; block indices of ``transformer``.
            source_model: hub id or path recorded in the config (default: the transformer's ``_name_or_path``).
            copy_weights: copy tensors (default) so the teacher stays independent; ``False`` shares storage.

        The kept blocks are renumbered ``0..N-1`` with their weights unchanged: each block computes exactly what it
        computed in the source model.
        """
        if not isinstance(transformer, PixArtTransformer2DModel):
            block_layout(transformer)  # raises the "not a supported transformer" error for other families
            raise LayerPruneError(f"{type(transformer).__name__} is not a PixArt transformer")
        depth = transformer.config.num_layers
        kept = resolve_kept_layers(depth, kept_layers, pruned_layers)

        parent_kept = transformer.config.get("kept_layers")
        source_num_layers = transformer.config.get("source_num_layers") or depth
        recorded = [parent_kept[i] for i in kept] if parent_kept is not None else kept
        if source_model is None:
            source_model = transformer.config.get("source_model") or source_id(transformer.config.get("_name_or_path"))

        init_keys = cls._get_init_keys(cls) - {"self", "kwargs"}
        config = {k: v for k, v in transformer.config.items() if k in init_keys}
        config.update(
            num_layers=len(kept), kept_layers=recorded, source_num_layers=source_num_layers, source_model=source_model
        )
        with torch.device("meta"):
            student = cls(**config)

        attr = block_layout(transformer).attr
        position = {source: target for target, source in enumerate(kept)}
        state = {}
        for key, value in transformer.state_dict().items():
            if key.startswith(attr + "."):
                _, index, rest = key.split(".", 2)
                if int(index) not in position:
                    continue
                key = f"{attr}.{position[int(index)]}.{rest}"
            state[key] = value.detach().clone() if copy_weights else value.detach()
        student.load_state_dict(state, strict=True, assign=True)

        # Non-persistent buffers (the sin-cos position table) are not in the state dict: take them over too.
        source_buffers = dict(transformer.named_buffers())
        for name, buffer in list(student.named_buffers()):
            if buffer.is_meta:
                module_name, _, buffer_name = name.rpartition(".")
                module = student.get_submodule(module_name) if module_name else student
                value = source_buffers[_renumber(name, attr, position)]
                setattr(module, buffer_name, value.clone() if copy_weights else value)
        leftover = [n for n, t in [*student.named_parameters(), *student.named_buffers()] if t.is_meta]
        if leftover:  # would mean a parameter the state dict does not cover: never ship uninitialised weights
            raise RuntimeError(f"pruned model has uninitialised tensors: {leftover[:5]}")
        if source_model is not None:
            student.register_to_config(_name_or_path=str(source_model))
        return student.train(transformer.training)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """``ModelMixin.from_pretrained`` that refuses checkpoints with missing or unexpected keys.

        diffusers otherwise fills missing blocks with random weights and only warns; a pruned checkpoint whose
        block numbering has gaps would load as a silently broken model.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = {k: info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
        if problems:
            summary = "; ".join(f"{k}: {sorted(v)[:4]}{' ...' if len(v) > 4 else ''}" for k, v in problems.items())
            raise LayerPruneError(
                f"checkpoint {pretrained_model_name_or_path} does not match its config ({summary}); "
                "its blocks must be numbered 0..num_layers-1"
            )
        return (model, info) if want_info else model

    def to_json_string(self) -> str:
        # Name the stock class so that AutoModel / DiffusionPipeline load our folders without this package.
        config = json.loads(super().to_json_string())
        config["_class_name"] = STOCK_CLASS[1]
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


def source_id(name_or_path: str | None) -> str | None:
    """The Hub id or folder a model was loaded from, given a ``_name_or_path``.

    Models loaded as part of a pipeline record ``<folder>/transformer``, and from the Hub a cache path
    ``.../models--org--name/snapshots/<sha>/transformer``: map those back to ``<folder>`` and ``org/name``.
    """
    if not name_or_path:
        return None
    text = str(name_or_path).rstrip("/")
    cached = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", text)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    return text.removesuffix("/transformer") or None


def _renumber(name: str, attr: str, position: dict[int, int]) -> str:
    """Map a student tensor name back to the source model's name (inverse of the block renumbering)."""
    if not name.startswith(attr + "."):
        return name
    _, index, rest = name.split(".", 2)
    source = {target: source for source, target in position.items()}[int(index)]
    return f"{attr}.{source}.{rest}"


def _check_kept_layers(kept: list[int], num_layers: int, source_num_layers: int | None) -> None:
    if len(kept) != num_layers:
        raise LayerPruneError(f"kept_layers has {len(kept)} entries but num_layers is {num_layers}")
    if any(b <= a for a, b in zip(kept[:-1], kept[1:], strict=True)):
        raise LayerPruneError(f"kept_layers must be strictly increasing, got {kept}")
    if source_num_layers is not None and kept and not 0 <= kept[0] <= kept[-1] < source_num_layers:
        raise LayerPruneError(f"kept_layers {kept} out of range for a source of {source_num_layers} blocks")


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------

# Short model names resolved before hub ids / paths. Values build the pipeline (or return a local folder path).
MODEL_ALIASES: dict[str, Callable] = {}


def _tiny_random_pipeline(**kwargs):
    from .testing import build_tiny_pixart_pipeline

    return build_tiny_pixart_pipeline(**kwargs)


MODEL_ALIASES["tiny-random"] = _tiny_random_pipeline


def _toy_pipeline(**kwargs):
    from .toy import load_toy_pipeline

    return load_toy_pipeline(**kwargs)


MODEL_ALIASES["toy"] = _toy_pipeline


def _toy_folder() -> Path:
    from .toy import toy_pipeline_path

    return toy_pipeline_path()


# Short names whose pipeline is a folder on disk: their config can be read without building the pipeline.
ALIAS_FOLDERS: dict[str, Callable[[], Path]] = {"toy": _toy_folder}


# Settings a model is meant to be used with, by short name; anything else gets PixArt-Sigma's. Prompt sets are
# `--prompts` specs (data.load_prompts): blocks are scored on `score_prompts`, distillation trains on
# `train_prompts`, evaluation uses `eval_prompts`; the first two never overlap the third (`layerprune run` checks).
GENERATION_DEFAULTS: dict[str, dict] = {
    # The toy world's values are those its numbers are measured with (diffusers_layerprune.toy constants).
    "toy": dict(
        max_sequence_length=16,
        num_inference_steps=20,
        guidance_scale=4.5,
        score_prompts="toy:train",
        train_prompts="toy:train",
        eval_prompts="toy:heldout",
        scorers=["toy"],
        dtype="float32",
    ),
    "tiny-random": dict(
        max_sequence_length=16,
        num_inference_steps=4,
        guidance_scale=1.0,
        score_prompts="toy:train",
        train_prompts="toy:train",
        eval_prompts="toy:heldout",
        scorers=["toy"],
        dtype="float32",
    ),
}
PIXART_SIGMA_DEFAULTS = dict(
    max_sequence_length=300,
    num_inference_steps=20,
    guidance_scale=4.5,
    score_prompts=PICKAPIC_SCORING_PROMPTS,
    train_prompts=PICKAPIC_TRAINING_PROMPTS,
    eval_prompts="hpdv2",
    scorers=["hpsv2.1", "pickscore", "clip"],
    # PixArt-Sigma is run in half precision (its T5-XXL alone is ~19 GB in float32, ~9.5 GB in bfloat16)
    dtype="bfloat16",
)
DTYPES = ("float32", "float16", "bfloat16")
REAL_SIZE_CAPTION_CHANNELS = 4096  # T5-XXL's width: transformers conditioned on it are real-size PixArt-Sigma


def model_defaults(model: str | os.PathLike, source_model: str | None = None) -> dict:
    """Defaults of ``model`` by name, else of its ``source_model`` (a pruned model takes its source's), else
    PixArt-Sigma's. No pipeline is loaded; a local folder's config is read when ``source_model`` is not given.

    ``dtype`` is bfloat16 for real-size PixArt-Sigma (T5-XXL conditioning, 4096 channels; Hub ids) and float32 for
    small models (the toy world, tiny test pipelines), whose numbers are kept exact."""
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
    defaults = dict(GENERATION_DEFAULTS.get(str(source_model), PIXART_SIGMA_DEFAULTS))
    if config is not None and str(source_model) not in GENERATION_DEFAULTS:
        if (config.get("caption_channels") or 0) < REAL_SIZE_CAPTION_CHANNELS:
            defaults["dtype"] = "float32"
    return defaults


def generation_defaults(model: str | os.PathLike, pipe) -> dict:
    """Settings ``model`` is meant to be used with: ``resolution`` (the transformer's native one, ``sample_size x VAE
    scale factor``), ``max_sequence_length``, ``num_inference_steps``, ``guidance_scale``, ``score_prompts``,
    ``train_prompts``, ``eval_prompts``, ``scorers`` and ``dtype``. A pruned model takes its source model's defaults."""
    defaults = model_defaults(model, pipe.transformer.config.get("source_model") or "")
    defaults.setdefault("resolution", pipe.transformer.config.sample_size * pipe.vae_scale_factor)
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


def generate_from_embeddings(
    pipe,
    embeds: torch.Tensor,
    masks: torch.Tensor,
    negative: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    seeds,
    num_inference_steps: int,
    guidance_scale: float,
    resolution: int,
    max_sequence_length: int,
    batch_size: int = 8,
    output_type: str = "pt",
    progress=None,
) -> torch.Tensor:
    """Generate from precomputed prompt embeddings ``[N, L, D]`` / masks ``[N, L]``; prompt ``i`` uses ``seeds[i]``.

    Each image's initial noise depends on its own seed only, so results do not change with ``batch_size``.
    ``negative`` is the encoded empty prompt ``([1, L, D], [1, L])``, needed when ``guidance_scale > 1``.
    Returns images ``[N, 3, R, R]`` in [0, 1] (``output_type="pt"``) or latents (``"latent"``), float32 on the CPU.
    ``progress(n)`` is called after each batch.
    """
    device, dtype = pipe.transformer.device, pipe.transformer.dtype
    out = []
    for start in range(0, len(embeds), batch_size):
        stop = min(start + batch_size, len(embeds))
        kwargs = {}
        if guidance_scale > 1 and negative is not None:
            kwargs = dict(
                negative_prompt_embeds=negative[0].expand(stop - start, -1, -1).to(device, dtype),
                negative_prompt_attention_mask=negative[1].expand(stop - start, -1).to(device),
            )
        result = pipe(
            prompt_embeds=embeds[start:stop].to(device, dtype),
            prompt_attention_mask=masks[start:stop].to(device),
            negative_prompt=None,  # PixArt's default "" clashes with negative_prompt_embeds
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            use_resolution_binning=False,
            max_sequence_length=max_sequence_length,
            generator=[torch.Generator().manual_seed(int(s)) for s in seeds[start:stop]],
            output_type=output_type,
            **kwargs,
        ).images
        result = result.float().cpu()
        out.append(result.clamp(0, 1) if output_type == "pt" else result)
        if progress is not None:
            progress(stop - start)
    return torch.cat(out)


def _looks_like_path(name: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else that does not exist is a mistyped local path.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def is_transformer_folder(path: str | os.PathLike) -> bool:
    """A single-model folder (``config.json`` + weights, no ``model_index.json``): a transformer saved alone, as
    ``--transformer-only`` writes it."""
    path = Path(path).expanduser()
    return (path / "config.json").is_file() and not (path / "model_index.json").is_file()


def _resolve_local(name: str) -> Path | None:
    """The local pipeline or transformer folder ``name`` points to, ``None`` for a Hub id; raises for a broken
    local path."""
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file() and not is_transformer_folder(path):
            raise LayerPruneError(
                f"{name} is not a diffusers pipeline folder (no model_index.json) nor a transformer folder "
                "(no config.json)"
            )
        return path
    if _looks_like_path(name):
        raise LayerPruneError(f"model path {name} does not exist")
    return None


def read_transformer_config(model: str | os.PathLike, *, revision: str | None = None) -> dict | None:
    """The pipeline's ``transformer/config.json`` without loading weights (``None`` for short names built in code).

    Lets commands check block indices and the model family before spending time on loading.
    """
    name = str(model)
    if name in MODEL_ALIASES:
        if name not in ALIAS_FOLDERS:
            return None
        path = ALIAS_FOLDERS[name]()
    else:
        path = _resolve_local(name)
    try:
        if path is not None:
            config_file = path / "config.json" if is_transformer_folder(path) else path / "transformer" / "config.json"
            if not config_file.is_file():
                raise LayerPruneError(f"{name} has no transformer/config.json; layerprune supports PixArt pipelines")
        else:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(name, "config.json", subfolder="transformer", revision=revision)
        config = json.loads(Path(config_file).read_text())
    except LayerPruneError:
        raise
    except Exception as error:
        raise LayerPruneError(f"could not read the transformer config of {name!r}: {_first_line(error)}") from error
    if not isinstance(config, dict) or "PixArt" not in str(config.get("_class_name", "")):
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise LayerPruneError(f"{name} holds a {found}; layerprune supports PixArt transformers (PixArt-Sigma)")
    from .validation import check_transformer_config, check_weights_cover_blocks

    check_transformer_config(config, str(config_file))
    if path is not None:  # local weights: their headers must hold exactly the blocks the config declares
        check_weights_cover_blocks(Path(config_file).parent, config["num_layers"])
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


def _first_line(error: Exception) -> str:
    # We print no stack trace, so drop the library's pointer to one.
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return first.replace(" Please check out the root cause in the stacktrace above.", "")


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
    """Load a PixArt pipeline from a short name (``tiny-random``), a local folder, or a Hub id (at ``revision``,
    weight files of ``variant`` such as ``fp16`` when given).

    ``components`` (e.g. ``transformer=student`` or ``text_encoder=None``) replace the saved ones without loading them.
    A transformer saved alone (``--transformer-only``) is loaded into its base pipeline: ``base_model``, or the
    ``source_model`` its config records.

    Raises :class:`LayerPruneError` with the fix for a missing path, a folder that is not a pipeline, a Hub id that
    cannot be fetched, or a pipeline whose transformer is not a PixArt transformer.
    """
    from diffusers import DiffusionPipeline

    name = str(model)
    local = None if name in MODEL_ALIASES else _resolve_local(name)
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
        try:
            if variant is not None:
                components["variant"] = variant
            pipe = DiffusionPipeline.from_pretrained(
                str(local or name), dtype=torch_dtype, revision=revision, **components
            )
        except Exception as error:  # hub / network / format errors: one line with the cause
            raise LayerPruneError(f"could not load pipeline {name!r}: {_first_line(error)}") from error
        transformer = getattr(pipe, "transformer", None)
        if local is not None and "transformer" not in components and isinstance(transformer, PixArtTransformer2DModel):
            from .provenance import restore_local_source

            restore_local_source(pipe.transformer, local)
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, PixArtTransformer2DModel):
        found = (
            type(transformer).__name__ if transformer is not None else f"{type(pipe).__name__} without a transformer"
        )
        raise LayerPruneError(f"{name} holds a {found}; layerprune supports PixArt transformers (PixArt-Sigma)")
    if device is not None:
        pipe.to(device)
    return pipe


def _load_with_base(folder: Path, base_model: str | None, *, torch_dtype=None, device=None, **components):
    """The base pipeline with the transformer saved alone in ``folder``."""
    from .provenance import local_source

    config = json.loads((folder / "config.json").read_text())
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
) -> PixArtTransformer2DModel:
    """Only the transformer of ``model`` (short name, pipeline folder, transformer folder or Hub id): pruning needs
    nothing else, and skipping PixArt-Sigma's 4.7B-parameter text encoder saves minutes and ~10-19 GB of memory.

    A pruned transformer (one whose config records ``kept_layers``) loads as :class:`PrunedPixArtTransformer`.
    """
    name = str(model)
    if name in MODEL_ALIASES:
        transformer = load_pipeline(name, torch_dtype=torch_dtype).transformer
        transformer.register_to_config(_name_or_path=name)
        return transformer
    config = read_transformer_config(name, revision=revision)
    local = _resolve_local(name)
    folder, subfolder = (local, None) if local is not None and is_transformer_folder(local) else (local, "transformer")
    cls = PrunedPixArtTransformer if config.get("kept_layers") is not None else PixArtTransformer2DModel
    try:
        transformer = cls.from_pretrained(
            str(folder or name), subfolder=subfolder, torch_dtype=torch_dtype, revision=revision
        )
    except LayerPruneError:
        raise
    except Exception as error:
        raise LayerPruneError(f"could not load the transformer of {name!r}: {_first_line(error)}") from error
    if config.get("source_model") is None:  # record where it came from: a Hub id, or the folder
        transformer.register_to_config(_name_or_path=name)
    elif local is not None:
        from .provenance import restore_local_source

        restore_local_source(transformer, local)
    return transformer


def save_pruned_transformer(
    transformer: PrunedPixArtTransformer,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable = (),
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Save only the transformer (``config.json`` + safetensors at the top of ``output_dir``), the layout a model repo
    that shares just the transformer has: ``PixArtTransformer2DModel.from_pretrained(output_dir)`` loads it, and
    the pipeline comes from the base model. Atomic, ownership-checked and path-free like :func:`save_pruned_pipeline`."""
    from .provenance import publish_configs

    if not isinstance(transformer, PrunedPixArtTransformer):
        raise LayerPruneError(f"expected a PrunedPixArtTransformer, got {type(transformer).__name__}")
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
) -> PrunedPixArtTransformer:
    """Load ``model``, keep (or drop) the given blocks and save the result to ``output_dir``: the whole pipeline, or
    with ``transformer_only`` just the pruned transformer (then only the transformer is loaded). ``dtype`` ``"auto"``
    is the model's (bfloat16 for PixArt-Sigma, float32 for the toy world). Returns the pruned transformer."""
    torch_dtype = resolve_dtype(dtype, model)
    if transformer_only:
        transformer = load_transformer(model, torch_dtype=torch_dtype, revision=revision)
        pruned = PrunedPixArtTransformer.from_transformer(
            transformer, kept_layers, pruned_layers, source_model=_source_of(model, transformer), copy_weights=False
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
    if not isinstance(transformer, PixArtTransformer2DModel):
        raise LayerPruneError(f"{type(pipe).__name__} has no PixArt transformer to prune")
    source = transformer.config.get("source_model") or pipe.name_or_path
    student = PrunedPixArtTransformer.from_transformer(
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
        if "transformer" in index and isinstance(pipe.transformer, PrunedPixArtTransformer):
            index["transformer"] = list(STOCK_CLASS)
            index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        publish_configs(tmp)
    return Path(output_dir)


__all__ = [
    "PrunedPixArtTransformer",
    "load_pipeline",
    "load_transformer",
    "save_pruned_transformer",
    "prune_to_folder",
    "prune_pipeline",
    "save_pruned_pipeline",
    "read_transformer_config",
    "MODEL_ALIASES",
]
