"""The :class:`ModelFamily` record: everything family-specific about a diffusion transformer, in one place.

A family is one module in this package that builds one :class:`ModelFamily` named ``FAMILY`` (and its pruned class),
plus one line in :data:`diffusers_layerprune.families.FAMILIES`. Block surgery, pruning, the scan runner's forward,
evaluation and training read the record; none of them test a model's class or spell a family's forward arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..prompt_sets import PICKAPIC_SCORING_PROMPTS, PICKAPIC_TRAINING_PROMPTS

# Text conditioning of a batch of prompts, keyed by the pipeline's own call-argument names: ``prompt_embeds``
# ``[B, L, D]`` always, plus ``prompt_attention_mask`` ``[B, L]`` (PixArt, Sana) or ``pooled_prompt_embeds``
# ``[B, P]`` (SD3, Flux).
TextConditioning = Mapping[str, torch.Tensor]


def first_tensor(output):
    """A block's image-token hidden states when it returns them alone or first."""
    return output[0] if isinstance(output, (tuple, list)) else output


def second_tensor(output):
    """A block's image-token hidden states when it returns ``(encoder_hidden_states, hidden_states)`` (SD3, Flux)."""
    return output[1]


@dataclass(frozen=True)
class BlockStack:
    """One ``nn.ModuleList`` of transformer blocks on the model.

    Attributes:
        attr: attribute name of the list on the model (``transformer_blocks``).
        depth_key: config key holding the list's length (``num_layers``, Flux's ``num_single_layers``).
        kind: the block kind users see in tables and JSON (``block``, ``joint``, ``double``, ``single``).
        hidden_from_output: maps a block's return value to its image-token hidden states ``[B, N, D]``.
        hidden_input_name: keyword name of the hidden-states argument, when it is not passed positionally.
        hidden_from_input: ``(args, kwargs) -> [B, N, D]``: a block's input hidden states when they are more than one
            argument (FLUX.2's double blocks: the joint ``[text; image]`` sequence, as its single blocks see it).
    """

    attr: str
    depth_key: str = "num_layers"
    kind: str = "block"
    hidden_from_output: Callable[[object], torch.Tensor] = field(default=first_tensor)
    hidden_input_name: str = "hidden_states"
    hidden_from_input: Callable[[tuple, dict], torch.Tensor] | None = None


@dataclass(frozen=True)
class IPAdapterLayout:
    """Where diffusers' IP-Adapter loader of a family (``pipe.load_ip_adapter`` ->
    ``transformer._load_ip_adapter_weights``) puts an IP-Adapter's weights.

    The loader reads ``{"image_proj": {...}, "ip_adapter": {"<i>.<name>": tensor}}`` and gives layer ``i`` to the
    ``i``-th attention processor it walks that carries IP-Adapter weights, whatever block that processor sits in: on a
    pruned model without renumbering, kept blocks get the weights of the parent's first blocks.

    Attributes:
        stack: attribute of the block stack whose blocks carry one IP-Adapter layer each, layer ``i`` in block ``i``
            (other stacks carry none: Flux's single-stream blocks).
        layer_names: the names every layer holds (``to_k_ip.weight``, ...); an IP-Adapter whose layers hold other
            names belongs to another family.
        check_widths: ``(config, state) -> problem or None``: whether the IP-Adapter's tensor shapes fit a transformer
            of ``config`` (``state`` as the loader reads it).
        unsupported: ``config -> problem or None``: a configuration of the family the loader cannot serve.
    """

    stack: str
    layer_names: frozenset[str]
    check_widths: Callable[[Mapping, Mapping], str | None]
    unsupported: Callable[[Mapping], str | None] = lambda config: None


@dataclass(frozen=True)
class ControlNetStack:
    """One list of a ControlNet's blocks: each block's image hidden states, through its own output projection, give
    one residual ("sample") for the transformer stack at the same position in :attr:`ModelFamily.stacks`.

    Attributes:
        blocks: attribute (and state-dict prefix) of the ControlNet's transformer blocks (``transformer_blocks``).
        projections: attribute of the per-block output projections (``controlnet_blocks``); sample ``k`` is
            ``projections[k](hidden states after blocks[k])``.
        depth_key: ControlNet config key holding the number of blocks (``num_layers``).
    """

    blocks: str
    projections: str
    depth_key: str


@dataclass(frozen=True)
class ControlNetLayout:
    """How a family's stock ControlNet feeds residuals to the transformer's blocks (diffusers' own arithmetic).

    Attributes:
        model_class: the stock ControlNet class name (``FluxControlNetModel``).
        pipeline_class: the stock pipeline that runs it (``FluxControlNetPipeline``).
        stacks: one :class:`ControlNetStack` per transformer stack, in the same order.
        sample_read: ``(stack, block, blocks, samples, controlnet_config) -> int | None``: which of ``samples``
            residuals the transformer adds after its block ``block`` of ``blocks`` in stack ``stack``, exactly as the
            stock forward and pipeline compute it, or ``None`` when that block receives none.
        identity_gates: ``{parameter path inside a block: {number of chunks: gate chunks}}``: the rows of a block's
            modulation ``Linear`` that gate every residual branch; zeroed, the block returns its inputs unchanged.
        indexed_keys: ControlNet config keys that list block indices (renumbered when blocks move).
    """

    model_class: str
    pipeline_class: str
    stacks: tuple[ControlNetStack, ...]
    sample_read: Callable[[int, int, int, int, Mapping], int | None]
    identity_gates: Mapping[str, Mapping[int, tuple[int, ...]]]
    indexed_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedConfig:
    """The transformer of a family's reference checkpoint, for benchmarks at the real widths with random weights.

    Attributes:
        hub_id: the checkpoint the config is from.
        title: its name in tables (``Flux.1-dev``).
        config: its transformer ``config.json`` (diffusers), as published.
        vae_factor: pixels per latent cell of the pipeline's VAE.
        text_tokens: text tokens the pipeline conditions on by default.
    """

    hub_id: str
    title: str
    config: Mapping[str, object]
    vae_factor: int
    text_tokens: int


def decode_scaled(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Final latents ``[B, C, h, w]`` -> images in [0, 1] as most pipelines decode: ``latents / scaling_factor +
    shift_factor`` (``shift_factor`` 0 where the VAE has none), the VAE's decoder, the image processor."""
    vae = pipe.vae
    scaled = latents / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
    pixels = vae.decode(scaled.to(vae.device, vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pt").float()


# Kept for callers of the one-stack API (``blocks.block_layout(model).attr``).
BlockLayout = BlockStack


@dataclass(frozen=True)
class Piece:
    """One tensor of a family's original (single-file) checkpoint, made from the diffusers state dict.

    Attributes:
        sources: diffusers keys whose tensors are concatenated along dim 0 (the original fuses ``q, k, v`` into one
            ``qkv`` projection); one key for a plain rename.
        swap_halves: the two halves along dim 0 change places (the original's adaptive norms emit ``shift, scale``
            where diffusers' emit ``scale, shift``).
        fill: no diffusers source: a zero tensor of this shape, for a key the original layout holds and diffusers'
            converter reads and drops (Sana's ``pos_embed``); ``sources`` is empty then.
    """

    sources: tuple[str, ...] = ()
    swap_halves: bool = False
    fill: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SingleFileLayout:
    """How a family's transformer is written as one file in its original checkpoint layout (the layout ComfyUI,
    Forge and diffusers' ``from_single_file`` read).

    Attributes:
        pieces: ``(config, diffusers keys) -> {original key: Piece}``; the pieces' sources must cover the diffusers
            state dict exactly (the exporter checks it, so a key the converter would drop is refused, not lost).
        converter: name of diffusers' converter in ``diffusers.loaders.single_file_utils`` that reads the layout back
            (this layout is its inverse; tests hold it to that), or ``"identity"`` where diffusers' single-file
            registry maps the class's files key for key (Qwen-Image).
        gguf_arch: ``general.architecture`` of a GGUF file (the name ComfyUI-GGUF detects the model by).
        check: ``config -> None | str``: why this config cannot be read back from a single file (``None``: it can).
        comfyui: what ComfyUI does with a pruned file of the family, as the model card says it (checked with
            ``benchmarks/comfy_check.py``; docs/stacking.md has the versions).
    """

    pieces: Callable[[Mapping, Sequence[str]], dict[str, Piece]]
    converter: str
    gguf_arch: str
    check: Callable[[Mapping], str | None] = lambda config: None
    comfyui: str = ""


# The card's ComfyUI note for families whose pruned files ComfyUI detects with their kept block counts.
COMFYUI_LOADS = (
    'put a `.gguf` file in `models/unet` and load it with ComfyUI-GGUF\'s "Unet Loader (GGUF)", a `.safetensors` '
    'file in `models/diffusion_models` ("Load Diffusion Model"); text encoders and VAE are the base model\'s. ComfyUI '
    "counts the blocks from the file's keys."
)


@dataclass(frozen=True)
class ModelFamily:
    """What layerprune needs to know about one family of diffusion transformers.

    Attributes:
        name: short name (``pixart``, ``sana``, ``sd3``, ``flux``), used in messages and importance files.
        title: the name users know (``PixArt-Sigma``).
        transformer_class: the stock diffusers class name; subclasses (the pruned class) match it too.
        pipeline_classes: stock pipeline class names of the family (text-to-image first).
        stacks: block lists in execution order; blocks are numbered globally in that order (Flux: doubles first).
        pruned_class: ``() -> type``: the pruned transformer class (imported lazily).
        forward: ``(transformer, latents [B, C, h, w], timestep [B] in 0..1000, text) -> prediction [B, C', h, w]``,
            the transformer's forward for a batch of cached text conditioning.
        encode: ``(pipe, prompts, max_sequence_length, device) -> TextConditioning`` (CPU tensors), exactly as the
            pipeline encodes them for generation.
        random_text: ``(config, batch, tokens, generator) -> TextConditioning`` of the transformer's widths, for
            latency measurements with random inputs.
        call_kwargs: ``(text, negative, resolution, max_sequence_length) -> dict``: the pipeline's call arguments
            that generate from cached conditioning (``negative`` is the empty prompt's, or ``None``).
        latent_channels: ``config -> int``: channels of the unpacked latents the pipeline denoises.
        prune_config: ``(config, kept_by_stack) -> dict`` of config updates beyond the depth keys (index-valued keys
            renumbered), or a :class:`~diffusers_layerprune.errors.LayerPruneError` for a selection that cannot be
            made loadable.
        adapt_state: ``(state, student, source_config, kept_by_stack) -> state``: fix-ups of the renumbered state dict
            when a block changes structure by its new position (SD3's last joint block).
        unpack_latents: ``(latents, resolution, vae_scale_factor) -> [B, C, h, w]``: what the pipeline returns with
            ``output_type="latent"`` as an image-shaped tensor (Flux returns packed ``[B, N, 4C]`` tokens).
        objective: how the family is trained: ``ddpm`` (noise prediction on a DDPM schedule: PixArt) or ``flow``
            (rectified flow, velocity prediction: Sana, SD3, Flux); ``train_distill`` implements both.
        text_keys: the keys of ``encode``'s conditioning; the distillation caches hold an embedding and a mask, so
            families with pooled embeddings (SD3, Flux) cannot be distilled yet.
        real_size: ``config -> bool``: a checkpoint of the real widths (run in ``defaults["dtype"]``), not a tiny test
            model (kept in float32 so its numbers are exact).
        native_resolution: ``pipe -> int``: the pixel size the pipeline generates by default.
        card_call_args: ``config -> dict``: what a stock pipeline call needs beyond a prompt for this transformer
            (the model card's snippet runs as printed): PixArt's and Sana's default resolution binning knows only
            the real sample sizes.
        defaults: sampler settings, prompt sets, scorers and dtype a real checkpoint of the family is used with.
        step_batch: the transformer's batch for one image's denoising step at the family's default guidance: 2
            with classifier-free guidance (conditional and unconditional halves), 1 where guidance is a model
            input (Flux.1-dev); latency benchmarks time this batch.
        ip_adapter: how diffusers' IP-Adapter loader addresses the family's blocks (``None``: diffusers has no
            IP-Adapter loader for the family).
        hub_ids: known checkpoints (documentation and ``source_model`` tags).
        references: citation keys of the family's papers (model cards).
        single_file: the original single-file layout (``layerprune export``), or ``None`` with
            ``single_file_refusal`` saying why the family cannot be exported.
        lora_format: how stock tools read a LoRA of the family: ``diffusers`` (the pipeline's ``load_lora_weights``
            reads ``pytorch_lora_weights.safetensors`` with ``transformer.``-prefixed keys, as
            ``pipeline_classes[0].save_lora_weights`` writes it) or ``peft`` (diffusers has no loader: a folder that
            ``peft.PeftModel.from_pretrained(pipe.transformer, folder)`` reads).
        adapt_lora: ``(state, source_config, kept_by_stack) -> state``: :attr:`adapt_state` for LoRA weights (peft keys
            ``<module>.lora_A.weight``, already renumbered), when a block changes structure by its new position.
        controlnet: how the family's stock ControlNet adds residuals to the blocks (``None``: diffusers has none).
        training_objective: flow families: the objective ``train_distill`` defaults to (``weighting_scheme``,
            ``precondition_outputs``, ``timestep_shift``; missing keys: uniform, unweighted, unshifted), the family's
            diffusers training example's (``flow_objective``; docs/families.md says why).
        image_tokens: ``(config, h, w) -> int``: image tokens of an ``h x w`` latent grid, the sequence length a
            resolution-dependent timestep shift reads (Flux packs 2x2 whatever its ``patch_size``).
        hub_tag: the Hub tag of the family's base models (model cards).
        citations: ``{reference key: citation}`` of :attr:`references` (model cards).
        tiny_pipeline: ``(**kwargs) -> pipeline``: a tiny random pipeline of the family's real component classes,
            built offline (short name ``tiny-random-<name>``; tests and examples run on it).
        tiny_resolution: pixel size the tiny pipeline generates at.
        tiny_call_args: what a call of the tiny pipeline needs beyond the common arguments (PixArt's and Sana's
            resolution binning off and caption cleaning off).
        published: the transformer config of the family's reference checkpoint, as published (its ``config.json``),
            for benchmarks with random weights; ``None``: none recorded.
        prompt_keyword: the card's snippet passes the prompt as ``prompt=`` (pipelines whose first parameter is not
            the prompt: ``Flux2Pipeline`` takes an image first).
        guidance_args: ``guidance_scale -> dict``: the pipeline's call arguments for layerprune's guidance scale
            (classifier-free guidance when above 1); Qwen-Image calls it ``true_cfg_scale``.
        true_cfg: ``config -> bool``: this checkpoint takes layerprune's guidance scale as the pipeline's
            ``true_cfg_scale`` (two forwards, the negative conditioning passed by :attr:`call_kwargs`) rather than
            as :attr:`guidance_args` says: Flux models without a guidance embedding (``toy-flux``); see
            :meth:`guidance_kwargs`.
        decode: ``(pipe, latents [B, C, h, w]) -> images [B, 3, H, W]`` in [0, 1], as the pipeline decodes its final
            latents (scaling, shift, batch-norm statistics, patch layout).
        encode_by_tokens: caches may encode each prompt at its own length with the tokenizer and the text encoder's
            first output (``data.iter_prompt_embeddings``: PixArt, Sana); ``False``: through :attr:`encode`, keeping
            each prompt's masked tokens (chat templates, dropped prefixes, stacked layers).
        caption_images: image-caption datasets can be encoded for distillation (``--dataset_name``,
            ``--train_data_dir``).
        routing: prompt routing (``layerprune route``) supports the family.
    """

    name: str
    title: str
    transformer_class: str
    pipeline_classes: tuple[str, ...]
    stacks: tuple[BlockStack, ...]
    pruned_class: Callable[[], type]
    forward: Callable[..., torch.Tensor]
    encode: Callable[..., TextConditioning]
    random_text: Callable[..., TextConditioning]
    call_kwargs: Callable[..., dict]
    latent_channels: Callable[[Mapping], int] = lambda config: int(config["in_channels"])
    prune_config: Callable[[Mapping, Sequence[Sequence[int]]], dict] = lambda config, kept: {}
    adapt_state: Callable[..., dict] | None = None
    unpack_latents: Callable[[torch.Tensor, int, int], torch.Tensor] = lambda latents, resolution, factor: latents
    real_size: Callable[[Mapping], bool] = lambda config: True
    objective: str = "ddpm"
    text_keys: tuple[str, ...] = ("prompt_embeds", "prompt_attention_mask")
    native_resolution: Callable[[object], int] = lambda pipe: int(
        pipe.transformer.config.sample_size * pipe.vae_scale_factor
    )
    card_call_args: Callable[[Mapping], dict] = lambda config: {}
    defaults: dict = field(default_factory=dict)
    step_batch: int = 2
    ip_adapter: IPAdapterLayout | None = None
    hub_ids: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    single_file: SingleFileLayout | None = None
    single_file_refusal: str = "diffusers has no single-file loader for it"
    lora_format: str = "diffusers"
    adapt_lora: Callable[..., dict] | None = None
    controlnet: ControlNetLayout | None = None
    training_objective: Mapping[str, object] = field(default_factory=dict)
    image_tokens: Callable[[Mapping, int, int], int] = lambda config, h, w: (
        (h // int(config.get("patch_size") or 1)) * (w // int(config.get("patch_size") or 1))
    )
    hub_tag: str = ""
    citations: Mapping[str, str] = field(default_factory=dict)
    tiny_pipeline: Callable[..., object] | None = None
    tiny_resolution: int = 16
    tiny_call_args: Mapping[str, object] = field(default_factory=dict)
    published: PublishedConfig | None = None
    prompt_keyword: bool = False
    guidance_args: Callable[[float], dict] = lambda scale: {"guidance_scale": scale}
    true_cfg: Callable[[Mapping], bool] = lambda config: False
    decode: Callable[[object, torch.Tensor], torch.Tensor] = decode_scaled
    encode_by_tokens: bool = False
    caption_images: bool = False
    routing: bool = False

    # -- block numbering ------------------------------------------------------------------------------------------

    def denoising_batch(self, guidance_scale: float, config: Mapping | None = None) -> int:
        """The transformer's batch for one image's denoising step at ``guidance_scale``: ``step_batch`` with
        classifier-free guidance (``guidance_scale > 1``), else 1; 2 where the checkpoint of ``config`` is guided by
        true CFG (:attr:`true_cfg`: the pipeline runs a second, negative forward). Latency measurements time this
        batch."""
        if guidance_scale <= 1:
            return 1
        return 2 if config is not None and self.true_cfg(config) else self.step_batch

    def guidance_kwargs(self, guidance_scale: float, config: Mapping) -> dict:
        """The pipeline's call arguments for layerprune's ``guidance_scale`` on a transformer of ``config``:
        :attr:`guidance_args`, or ``true_cfg_scale`` where :attr:`true_cfg` says the checkpoint is guided that way."""
        if self.true_cfg(config):
            return {"true_cfg_scale": guidance_scale}
        return self.guidance_args(guidance_scale)

    def stack_depths(self, config: Mapping) -> list[int]:
        """Depth of each stack according to ``config``."""
        return [int(config[stack.depth_key]) for stack in self.stacks]

    def depth(self, config: Mapping) -> int:
        """Number of blocks in all stacks: global indices run ``0..depth-1``."""
        return sum(self.stack_depths(config))

    def split(self, indices: Sequence[int], depths: Sequence[int]) -> list[list[int]]:
        """Global block indices -> one list of local indices per stack (order kept)."""
        out: list[list[int]] = [[] for _ in depths]
        for index in indices:
            start = 0
            for s, depth in enumerate(depths):
                if index < start + depth:
                    out[s].append(index - start)
                    break
                start += depth
        return out

    def block_names(self, depths: Sequence[int]) -> list[str]:
        """One label per global index: the block's stack and its index there (``double 3``); one-stack families
        label blocks by their index alone."""
        if len(self.stacks) == 1:
            return [str(i) for i in range(depths[0])]
        return [f"{stack.kind} {i}" for stack, depth in zip(self.stacks, depths, strict=True) for i in range(depth)]

    def stack_of(self, depths: Sequence[int]) -> list[str]:
        """The stack kind of each global index."""
        return [stack.kind for stack, depth in zip(self.stacks, depths, strict=True) for _ in range(depth)]


def to_device(text: TextConditioning, device, dtype) -> dict[str, torch.Tensor]:
    """``text`` on ``device``; floating tensors (embeddings) in ``dtype``, integer ones (masks) unchanged."""
    return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in text.items()}


def rows(text: TextConditioning, start: int, stop: int) -> dict[str, torch.Tensor]:
    """Prompts ``start:stop`` of a batch of conditioning."""
    return {k: v[start:stop] for k, v in text.items()}


def expand(text: TextConditioning, batch: int) -> dict[str, torch.Tensor]:
    """One prompt's conditioning (the empty negative prompt) repeated ``batch`` times."""
    return {k: v.expand(batch, *v.shape[1:]) for k, v in text.items()}


def encode_masked(pipe, prompts, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
    """PixArt / Sana: ``pipe.encode_prompt`` without caption cleaning -> embeddings and attention mask (CPU)."""
    embeds, mask, _, _ = pipe.encode_prompt(
        list(prompts),
        do_classifier_free_guidance=False,
        device=device,
        clean_caption=False,
        max_sequence_length=max_sequence_length,
    )
    return {"prompt_embeds": embeds.cpu(), "prompt_attention_mask": mask.cpu()}


def binning_call_args(sample_sizes: tuple[int, ...]) -> Callable[[Mapping], dict]:
    """``card_call_args`` of a pipeline whose default resolution binning exists only for ``sample_sizes`` (it raises
    "Invalid sample size" for others, e.g. tiny models): binning off for those."""
    return lambda config: {} if config.get("sample_size") in sample_sizes else {"use_resolution_binning": False}


def cached_call_kwargs(names: Mapping[str, str], *, negative: bool = True, **fixed) -> Callable[..., dict]:
    """A ``call_kwargs`` for a pipeline that takes cached conditioning as call arguments: ``names`` maps each
    conditioning key to the pipeline's argument (Qwen-Image: ``prompt_attention_mask`` -> ``prompt_embeds_mask``),
    the negative prompt's go to the same names prefixed ``negative_`` (``negative=False``: the pipeline takes none),
    then ``height``, ``width``, ``max_sequence_length`` and ``fixed`` as they are."""

    def call_kwargs(text, negative_text, resolution: int, max_sequence_length: int) -> dict:
        kwargs = {argument: text[key] for key, argument in names.items()}
        kwargs.update(fixed, height=resolution, width=resolution, max_sequence_length=max_sequence_length)
        if negative and negative_text is not None:
            kwargs.update({f"negative_{argument}": negative_text[key] for key, argument in names.items()})
        return kwargs

    return call_kwargs


# PixArt / Sana pipeline arguments that generate from cached embeddings and masks.
masked_call_kwargs = cached_call_kwargs(
    {"prompt_embeds": "prompt_embeds", "prompt_attention_mask": "prompt_attention_mask"},
    negative_prompt=None,  # the pipelines' default "" would clash with negative_prompt_embeds
    use_resolution_binning=False,
)


def real_defaults(*, max_sequence_length: int, num_inference_steps: int, guidance_scale: float) -> dict:
    """``ModelFamily.defaults`` of a real checkpoint: its sampler settings; blocks scored and distilled on
    Pick-a-Pic prompts, evaluated on HPDv2's with HPSv2.1, PickScore and CLIP; bfloat16 (a real checkpoint's text
    encoder alone is many GB in float32: PixArt-Sigma's T5-XXL ~19 GB, ~9.5 GB in bfloat16)."""
    return dict(
        max_sequence_length=max_sequence_length,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        score_prompts=PICKAPIC_SCORING_PROMPTS,
        train_prompts=PICKAPIC_TRAINING_PROMPTS,
        eval_prompts="hpdv2",
        scorers=["hpsv2.1", "pickscore", "clip"],
        dtype="bfloat16",
    )


def guidance_input(transformer, batch: int, scale: float, device) -> torch.Tensor | None:
    """A guidance-distilled transformer's guidance input ``[batch]`` (float32); ``None`` for a model without a
    guidance embedding."""
    if getattr(transformer, "module", transformer).config.get("guidance_embeds"):  # DDP wraps the model
        return torch.full((batch,), scale, device=device, dtype=torch.float32)
    return None


def masked_random_text(width_key: str):
    """Random embeddings of width ``config[width_key]`` and an all-ones mask, for latency measurements."""

    def random_text(config, batch: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeds": torch.randn(batch, tokens, int(config[width_key]), generator=generator),
            "prompt_attention_mask": torch.ones(batch, tokens, dtype=torch.long),
        }

    return random_text


def pooled_random_text(config, batch: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """SD3 / Flux: random T5-width embeddings and pooled CLIP embeddings, for latency measurements."""
    return {
        "prompt_embeds": torch.randn(batch, tokens, int(config["joint_attention_dim"]), generator=generator),
        "pooled_prompt_embeds": torch.randn(batch, int(config["pooled_projection_dim"]), generator=generator),
    }


def fused(original: str, sources: Sequence[str], keys, *, swap_halves: bool = False) -> dict[str, Piece]:
    """``{original.weight: Piece, original.bias: Piece}`` from the diffusers modules ``sources`` (their tensors
    concatenated along dim 0), for each of ``weight`` / ``bias`` / ``scale`` the first source holds in ``keys``."""
    out = {}
    for suffix in ("weight", "bias"):
        if f"{sources[0]}.{suffix}" in keys:
            out[f"{original}.{suffix}"] = Piece(tuple(f"{s}.{suffix}" for s in sources), swap_halves=swap_halves)
    return out


def bfl_pieces(
    keys,
    top: Mapping[str, str],
    double: Callable[[str, str], Mapping[str, str]],
    single: Callable[[str, str, set], dict[str, Piece]],
) -> dict[str, Piece]:
    """Black Forest Labs' checkpoint layout (Flux.1, FLUX.2) from diffusers' ``keys``: the plain renames ``top``
    (original -> diffusers module), the final modulation (the original's ``shift, scale`` is diffusers'
    ``scale, shift``), then ``double_blocks.N`` and ``single_blocks.N``, each renumbered from 0.

    A double block ``o`` from diffusers' ``d`` is its image and text ``qkv`` fused from diffusers' separate
    projections, the family's renames ``double(o, d)``, then the four query/key RMS-norm scales; a single block is
    the family's ``single(o, d, keys)``, then its two query/key norm scales."""
    keys = set(keys)
    pieces = renamed(top, keys)
    pieces.update(fused("final_layer.adaLN_modulation.1", ["norm_out.linear"], keys, swap_halves=True))
    for i in range(block_count(keys, "transformer_blocks")):
        d, o = f"transformer_blocks.{i}", f"double_blocks.{i}"
        pieces.update(fused(f"{o}.img_attn.qkv", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"], keys))
        pieces.update(
            fused(f"{o}.txt_attn.qkv", [f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"], keys)
        )
        pieces.update(renamed(double(o, d), keys))
        for original, source in (
            (f"{o}.img_attn.norm.query_norm", f"{d}.attn.norm_q"),
            (f"{o}.img_attn.norm.key_norm", f"{d}.attn.norm_k"),
            (f"{o}.txt_attn.norm.query_norm", f"{d}.attn.norm_added_q"),
            (f"{o}.txt_attn.norm.key_norm", f"{d}.attn.norm_added_k"),
        ):
            pieces[f"{original}.scale"] = Piece((f"{source}.weight",))
    for i in range(block_count(keys, "single_transformer_blocks")):
        d, o = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        pieces.update(single(o, d, keys))
        pieces[f"{o}.norm.query_norm.scale"] = Piece((f"{d}.attn.norm_q.weight",))
        pieces[f"{o}.norm.key_norm.scale"] = Piece((f"{d}.attn.norm_k.weight",))
    return pieces


def renamed(mapping: Mapping[str, str], keys) -> dict[str, Piece]:
    """Plain renames ``{original module: diffusers module}`` (weight and bias where the diffusers module has them)."""
    out = {}
    for original, source in mapping.items():
        out.update(fused(original, [source], keys))
    return out


def block_count(keys, prefix: str) -> int:
    """Blocks ``prefix.N.*`` in ``keys`` (numbered 0..count-1 in a pruned or stock save)."""
    found = {int(key[len(prefix) + 1 :].split(".", 1)[0]) for key in keys if key.startswith(prefix + ".")}
    return max(found) + 1 if found else 0
