"""Flux.1: ``FluxTransformer2DModel``, two stacks run in order: ``num_layers`` double-stream blocks
(``transformer_blocks``), then ``num_single_layers`` single-stream blocks (``single_transformer_blocks``).

Blocks are addressed by one global index in execution order (doubles first): Flux.1-dev's 19 + 38 blocks are
0..18 (double) and 19..56 (single). A pruned config records ``kept_layers`` in that numbering and sets both depth keys.

Black Forest Labs, FLUX.1 (2024); the MMDiT double-stream design is Esser et al. (ICML 2024).
"""

from __future__ import annotations

import math

import torch
from diffusers import FluxTransformer2DModel

from ..pruned import PrunedTransformerMixin
from ..testing import (
    build_clip_tokenizer,
    build_flow_vae,
    build_t5_tokenizer,
    build_tiny_clip_text_encoder,
    build_tiny_t5_encoder,
)
from .base import (
    COMFYUI_LOADS,
    BlockStack,
    ControlNetLayout,
    ControlNetStack,
    IPAdapterLayout,
    ModelFamily,
    Piece,
    PublishedConfig,
    SingleFileLayout,
    bfl_pieces,
    cached_call_kwargs,
    fused,
    guidance_input,
    pooled_random_text,
    real_defaults,
    renamed,
    second_tensor,
)

GUIDANCE = 3.5  # FluxPipeline's default distilled guidance for Flux.1-dev


def pack(latents: torch.Tensor) -> torch.Tensor:
    """``[B, C, h, w]`` -> ``[B, h/2 * w/2, 4C]``: FluxPipeline's 2x2 patch packing."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, c4 = packed.shape
    c = c4 // 4
    return packed.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def image_ids(h: int, w: int, device, dtype) -> torch.Tensor:
    """Rotary position ids of the packed latent grid ``[h/2 * w/2, 3]`` (channel 0 unused, then row, column)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device, dtype)


def forward(transformer, latents, timestep, text, guidance: float = GUIDANCE) -> torch.Tensor:
    """Flow (velocity) prediction on unpacked latents ``[B, C, h, w]``; ``timestep`` in 0..1000 (the pipeline's
    scheduler units; the transformer takes it divided by 1000). ``guidance``: the guidance-distilled model's guidance
    input (Flux.1-dev; unused by models without a guidance embedding)."""
    _, _, h, w = latents.shape
    embeds = text["prompt_embeds"]
    out = transformer(
        hidden_states=pack(latents),
        encoder_hidden_states=embeds,
        pooled_projections=text["pooled_prompt_embeds"],
        timestep=timestep.to(latents.dtype) / 1000,
        img_ids=image_ids(h, w, latents.device, latents.dtype),
        txt_ids=torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype),
        guidance=guidance_input(transformer, latents.shape[0], guidance, latents.device),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode(pipe, prompts, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
    """CLIP (pooled) and T5 (per token) as ``FluxPipeline.encode_prompt`` runs them (same prompt for both)."""
    embeds, pooled, _ = pipe.encode_prompt(
        prompt=list(prompts), prompt_2=None, device=device, max_sequence_length=max_sequence_length
    )
    return {"prompt_embeds": embeds.cpu(), "pooled_prompt_embeds": pooled.cpu()}


# Flux.1-dev's guidance is distilled into the model (guidance_scale is an input, not a second forward): there the
# negative conditioning is passed but unused, since FluxPipeline runs it only with true_cfg_scale > 1, which
# layerprune sets only for models without a guidance embedding that ask for it (true_cfg below).
call_kwargs = cached_call_kwargs({"prompt_embeds": "prompt_embeds", "pooled_prompt_embeds": "pooled_prompt_embeds"})


# The config key (underscore: stock loading keeps it in the model's config without a warning) by which a checkpoint
# says it was trained with caption dropout for FluxPipeline's true CFG, holding the scale it is meant to run at;
# pruned models carry it over.
TRUE_CFG_KEY = "_layerprune_true_cfg"


def true_cfg(config) -> bool:
    """A Flux model without a guidance embedding that says it was trained with caption dropout (``toy-flux``, by
    :data:`TRUE_CFG_KEY` in its config) is guided by FluxPipeline's true CFG (``true_cfg_scale`` with an empty
    negative prompt: two forwards per step). Other checkpoints without a guidance embedding (FLUX.1-schnell, meant to
    run unguided) keep FluxPipeline's behaviour: the guidance scale is passed as ``guidance_scale``, which they
    ignore, so no second forward is added behind the user's back."""
    return bool(config.get(TRUE_CFG_KEY)) and not config.get("guidance_embeds")


def card_call_args(config) -> dict:
    """What the card's stock snippet passes for a true-CFG checkpoint: its scale against the empty prompt (a stock
    FluxPipeline call otherwise runs it unguided)."""
    scale = config.get(TRUE_CFG_KEY)
    if not true_cfg(config) or isinstance(scale, bool):
        return {}
    return {"negative_prompt": "", "true_cfg_scale": float(scale)}


def ip_adapter_widths(config, state) -> str | None:
    """Whether a Flux IP-Adapter fits ``config``: ``FluxIPAdapterAttnProcessor`` projects the image tokens (of the
    text width ``joint_attention_dim``) to the attention width with biased ``to_k_ip`` / ``to_v_ip``, and the
    ``ImageProjection`` (``proj``, ``norm``) makes tokens of the text width."""
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    text = int(config["joint_attention_dim"])
    for key, value in state["ip_adapter"].items():
        want = (inner, text) if key.endswith(".weight") else (inner,)
        if tuple(value.shape) != want:
            return f"layer {key} has shape {list(value.shape)} where this model (width {inner}, text width {text}) needs {list(want)}"
    norm = state["image_proj"].get("norm.weight")
    if "proj.weight" not in state["image_proj"] or norm is None:
        return "its image_proj has no proj.weight / norm.weight (the ImageProjection diffusers' Flux loader builds)"
    if tuple(norm.shape) != (text,):
        return f"its image_proj makes tokens of width {norm.shape[0]}; this model's text width is {text}"
    return None


IP_ADAPTER = IPAdapterLayout(
    stack="transformer_blocks",  # FluxTransformer2DLoadersMixin: double-stream blocks only, counted in order
    layer_names=frozenset({"to_k_ip.weight", "to_k_ip.bias", "to_v_ip.weight", "to_v_ip.bias"}),
    check_widths=ip_adapter_widths,
)


def controlnet_sample(stack: int, block: int, blocks: int, samples: int, controlnet_config) -> int:
    """The residual ``FluxTransformer2DModel.forward`` adds after block ``block`` of a stack of ``blocks``: sample
    ``block // ceil(blocks / samples)``, or for the double stack ``block % samples`` when ``FluxControlNetPipeline``
    passes ``controlnet_blocks_repeat`` (a ControlNet with an ``input_hint_block``: XLabs' layout)."""
    if stack == 0 and controlnet_config.get("conditioning_embedding_channels") is not None:
        return block % samples
    return block // int(math.ceil(blocks / samples))  # the float division and ceil of the stock forward


CONTROLNET = ControlNetLayout(
    model_class="FluxControlNetModel",
    pipeline_class="FluxControlNetPipeline",
    stacks=(
        ControlNetStack(blocks="transformer_blocks", projections="controlnet_blocks", depth_key="num_layers"),
        ControlNetStack(
            blocks="single_transformer_blocks", projections="controlnet_single_blocks", depth_key="num_single_layers"
        ),
    ),
    sample_read=controlnet_sample,
    # AdaLayerNormZero chunks shift, scale, gate, shift_mlp, scale_mlp, gate_mlp (double blocks, both streams);
    # AdaLayerNormZeroSingle chunks shift, scale, gate (single blocks: one gate over attention and MLP).
    identity_gates={"norm1.linear": {6: (2, 5)}, "norm1_context.linear": {6: (2, 5)}, "norm.linear": {3: (2,)}},
)
# diffusers 0.42's Flux converter splits each single block's fused projection at Flux.1's widths (3 x 3072 + 12288
# rows), whatever the config says: other widths cannot be read back from one file.
SINGLE_FILE_WIDTH = 3072


def original_pieces(config, keys) -> dict[str, Piece]:
    """Black Forest Labs' Flux.1 checkpoint layout (``double_blocks.N`` then ``single_blocks.N``, each renumbered
    from 0), the inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``."""
    top = {
        "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
        "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
        "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
        "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",  # Flux.1-dev only
        "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
        "txt_in": "context_embedder",
        "img_in": "x_embedder",
        "final_layer.linear": "proj_out",
    }

    def double(o, d):  # each block has its own modulation
        return {
            f"{o}.img_mod.lin": f"{d}.norm1.linear",
            f"{o}.txt_mod.lin": f"{d}.norm1_context.linear",
            f"{o}.img_attn.proj": f"{d}.attn.to_out.0",
            f"{o}.txt_attn.proj": f"{d}.attn.to_add_out",
            f"{o}.img_mlp.0": f"{d}.ff.net.0.proj",
            f"{o}.img_mlp.2": f"{d}.ff.net.2",
            f"{o}.txt_mlp.0": f"{d}.ff_context.net.0.proj",
            f"{o}.txt_mlp.2": f"{d}.ff_context.net.2",
        }

    def single(o, d, keys):  # the original fuses q, k, v and the MLP input into one projection
        pieces = fused(f"{o}.linear1", [f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"], keys)
        pieces.update(renamed({f"{o}.modulation.lin": f"{d}.norm.linear", f"{o}.linear2": f"{d}.proj_out"}, keys))
        return pieces

    return bfl_pieces(keys, top, double, single)


def single_file_check(config) -> str | None:
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    if width != SINGLE_FILE_WIDTH:
        return (
            f"diffusers' Flux single-file converter only reads Flux.1's width {SINGLE_FILE_WIDTH} "
            f"(this model is {width} wide)"
        )
    return None


class PrunedFluxTransformer(PrunedTransformerMixin, FluxTransformer2DModel):
    """A depth-pruned ``FluxTransformer2DModel``. ``kept_layers`` is in the source's global numbering (doubles
    first); ``source_stack_depths`` holds the source's ``[num_layers, num_single_layers]``. LoRA through the stock
    class's ``PeftAdapterMixin``."""

    family = "flux"

    depth_keys = ("num_layers", "num_single_layers")


def build_tiny_flux_pipeline(num_layers: int = 2, num_single_layers: int = 4, *, seed: int = 0):
    """A complete tiny ``FluxPipeline`` (CLIP + T5 text encoders, ``AutoencoderKL``, ``FluxTransformer2DModel`` with
    ``num_layers`` double-stream then ``num_single_layers`` single-stream blocks), random weights. Generate at
    ``16`` px (VAE factor 2, latents packed 2x2)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_tiny_clip_text_encoder(len(clip_tokenizer), 16)
    text_encoder_2 = build_tiny_t5_encoder(len(t5_tokenizer), d_model=32)
    vae = build_flow_vae(4, seed=seed + 1, sample_size=16)
    torch.manual_seed(seed + 2)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,  # Flux.1-dev
        axes_dims_rope=(2, 2, 4),
    ).eval()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


FLUX1_DEV_TRANSFORMER = dict(  # black-forest-labs/FLUX.1-dev
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)


FAMILY = ModelFamily(
    name="flux",
    title="Flux.1",
    transformer_class="FluxTransformer2DModel",
    pipeline_classes=("FluxPipeline",),
    stacks=(
        BlockStack(attr="transformer_blocks", depth_key="num_layers", kind="double", hidden_from_output=second_tensor),
        BlockStack(
            attr="single_transformer_blocks",
            depth_key="num_single_layers",
            kind="single",
            hidden_from_output=second_tensor,
        ),
    ),
    pruned_class=lambda: PrunedFluxTransformer,
    forward=forward,
    encode=encode,
    random_text=pooled_random_text,
    call_kwargs=call_kwargs,
    true_cfg=true_cfg,
    card_call_args=card_call_args,
    latent_channels=lambda config: int(config["in_channels"]) // 4,
    ip_adapter=IP_ADAPTER,
    step_batch=1,  # guidance-distilled: FluxPipeline runs one forward per step, guidance is an input
    unpack_latents=lambda latents, resolution, factor: unpack(latents, resolution // factor, resolution // factor),
    objective="flow",
    # train_dreambooth_lora_flux.py trains uniform and unshifted (its use_dynamic_shifting table is unshifted)
    caption_images=True,  # train_distill encodes image-caption datasets with the family's VAE (image_data.vae_latents)
    training_objective=dict(weighting_scheme="none", precondition_outputs=0, timestep_shift="none"),
    image_tokens=lambda config, h, w: (h // 2) * (w // 2),  # FluxPipeline's packed sequence length
    text_keys=("prompt_embeds", "pooled_prompt_embeds"),
    real_size=lambda config: (config.get("joint_attention_dim") or 0) >= 4096,  # T5-XXL conditioning
    native_resolution=lambda pipe: int(pipe.default_sample_size * pipe.vae_scale_factor),
    defaults=real_defaults(max_sequence_length=512, num_inference_steps=28, guidance_scale=3.5),
    hub_ids=("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell"),
    references=("flux",),
    controlnet=CONTROLNET,
    single_file=SingleFileLayout(
        pieces=original_pieces,
        converter="convert_flux_transformer_checkpoint_to_diffusers",
        gguf_arch="flux",
        check=single_file_check,
        comfyui=COMFYUI_LOADS,
    ),
    hub_tag="flux",
    citations={"flux": "Black Forest Labs, FLUX.1 (2024), https://github.com/black-forest-labs/flux."},
    tiny_pipeline=build_tiny_flux_pipeline,
    published=PublishedConfig(
        hub_id="black-forest-labs/FLUX.1-dev",
        title="Flux.1-dev",
        config=FLUX1_DEV_TRANSFORMER,
        vae_factor=8,
        text_tokens=512,
    ),
)


def build_real_width_flux_pipeline(*, init_dtype: torch.dtype = torch.bfloat16, **config_overrides):
    """The tiny Flux pipeline (tiny text encoders and VAE) with a transformer of Flux.1's block widths (24 heads x
    128; 1 double + 2 single blocks), bfloat16: the smallest Flux that diffusers' single-file converter reads back
    (it splits single blocks at Flux.1's widths whatever the config says). Weights are drawn from seed 0 in
    ``init_dtype`` (bfloat16: no float32 copy of the 0.5 B parameters; float32: drawn in float32, then cast).
    ``config_overrides``: further transformer config values (e.g. Flux.1's text widths, for a file that is only
    exported: the tiny encoders then no longer fit)."""
    pipe = build_tiny_flux_pipeline(1, 2)
    config = {**pipe.transformer.config, "num_attention_heads": 24, "attention_head_dim": 128}
    config["axes_dims_rope"] = (16, 56, 56)  # sums to the head width, as Flux.1's
    config.update(config_overrides)
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(init_dtype)
    try:
        transformer = type(pipe.transformer).from_config(config).eval()
    finally:
        torch.set_default_dtype(before)
    pipe.transformer = transformer.to(torch.bfloat16)
    return pipe.to(torch.bfloat16)


# Run by a stock process (``python -c SCRIPT FOLDER SINGLE_FILE GGUF_FILE``, without this package): generate with a
# pruned Flux folder, then with its transformer read from the single file and from the GGUF file that
# ``layerprune export`` wrote; print the max |difference| of each to the folder's images and what was loaded.
FLUX_FILE_LOAD_SCRIPT = """
import json, sys, torch
from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
from safetensors import safe_open

folder, single_file, gguf_file = sys.argv[1:4]
pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
pipe.set_progress_bar_config(disable=True)

def generate():
    return pipe("a red circle", num_inference_steps=2, height=16, width=16, max_sequence_length=16,
                output_type="pt", generator=torch.Generator().manual_seed(0)).images.float()

def aligned(transformer):
    # memory-mapped safetensors weights can sit at unaligned addresses where CPU matmuls round differently
    for p in transformer.parameters():
        p.data = p.data.clone()
    return transformer

aligned(pipe.transformer)
reference = generate()
with safe_open(single_file, framework="pt") as f:
    blocks = sorted({".".join(k.split(".")[:2]) for k in f.keys() if "blocks." in k})
pipe.transformer = None
pipe.transformer = aligned(FluxTransformer2DModel.from_single_file(
    single_file, config=folder, subfolder="transformer", torch_dtype=torch.bfloat16))
single = generate()
pipe.transformer = None
pipe.transformer = FluxTransformer2DModel.from_single_file(
    gguf_file, config=folder, subfolder="transformer",
    quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
quantized = sorted({int(getattr(p, "quant_type", -1)) for p in pipe.transformer.parameters()} - {-1})
gguf = generate()
assert "diffusers_layerprune" not in sys.modules, "plugin was imported"
print(json.dumps(dict(single=(single - reference).abs().max().item(), gguf=(gguf - reference).abs().max().item(),
                      finite=bool(torch.isfinite(gguf).all()), quantized=quantized, blocks=blocks)))
"""


__all__ = [
    "FAMILY",
    "PrunedFluxTransformer",
    "build_tiny_flux_pipeline",
    "FLUX1_DEV_TRANSFORMER",
    "build_real_width_flux_pipeline",
    "FLUX_FILE_LOAD_SCRIPT",
]
