"""FLUX.2: ``Flux2Transformer2DModel``, two stacks run in order: ``num_layers`` double-stream blocks
(``transformer_blocks``), then ``num_single_layers`` single-stream blocks (``single_transformer_blocks``), Mistral
Small 3 text (three hidden layers stacked), ``AutoencoderKLFlux2``.

Blocks are addressed by one global index in execution order (doubles first): FLUX.2-dev's 8 + 48 blocks are 0..7
(double) and 8..55 (single). The modulation is shared by all blocks of a stack (it lives on the model), so removing
blocks needs no other change. A single-stream block reads and returns the joint ``[text; image]`` sequence, so the
hidden states of every block (block features, importance criteria, feature distillation) are that joint sequence:
a double block's two streams are concatenated in the same order.

Latents here are the pipeline's patchified grid ``[B, 4C, h/2, w/2]`` (the VAE's latents in 2x2 patches,
batch-norm normalised), which the transformer reads as one token per cell.

Black Forest Labs, FLUX.2 (2025).
"""

from __future__ import annotations

import torch
from diffusers import Flux2Transformer2DModel

from ..pruned import PrunedTransformerMixin
from .base import (
    BlockStack,
    ModelFamily,
    Piece,
    PublishedConfig,
    SingleFileLayout,
    bfl_pieces,
    first_tensor,
    guidance_input,
    real_defaults,
    renamed,
)

GUIDANCE = 4.0  # Flux2Pipeline's default guidance (distilled into the model: an input, not a second forward)


def joint_input(args, kwargs) -> torch.Tensor:
    """A double block's input as the joint ``[text; image]`` sequence the single blocks read."""
    image = args[0] if args else kwargs["hidden_states"]  # positional under gradient checkpointing
    text = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
    return torch.cat([text, image], dim=1)


def joint_output(output) -> torch.Tensor:
    """A double block's ``(text, image)`` output as the joint ``[text; image]`` sequence."""
    return torch.cat([output[0], output[1]], dim=1)


def grid_ids(h: int, w: int, device) -> torch.Tensor:
    """Position ids ``[h * w, 4]`` (time, row, column, layer) of the latent grid, as ``Flux2Pipeline`` makes them."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1)).to(device)


def text_ids(length: int, device) -> torch.Tensor:
    """Position ids ``[L, 4]`` of the text tokens (the fourth coordinate counts them), as the pipeline makes them."""
    return torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(length)).to(device)


def forward(transformer, latents, timestep, text) -> torch.Tensor:
    """Flow (velocity) prediction on the patchified grid ``[B, C, h, w]``; ``timestep`` in 0..1000 (the pipeline's
    scheduler units; the transformer takes it divided by 1000)."""
    b, c, h, w = latents.shape
    embeds = text["prompt_embeds"]
    out = transformer(
        hidden_states=latents.reshape(b, c, h * w).permute(0, 2, 1),
        encoder_hidden_states=embeds,
        timestep=timestep.to(latents.dtype) / 1000,
        img_ids=grid_ids(h, w, latents.device),
        txt_ids=text_ids(embeds.shape[1], latents.device),
        guidance=guidance_input(transformer, b, GUIDANCE, latents.device),
        return_dict=False,
    )[0]
    return out.permute(0, 2, 1).reshape(b, -1, h, w)


def encode(pipe, prompts, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
    """Mistral's hidden layers, stacked per token, as ``Flux2Pipeline.encode_prompt`` makes them (every token is
    read: no mask)."""
    embeds, _ = pipe.encode_prompt(prompt=list(prompts), device=device, max_sequence_length=max_sequence_length)
    return {"prompt_embeds": embeds.cpu()}


def call_kwargs(text, negative, resolution: int, max_sequence_length: int) -> dict:
    # guidance-distilled: the pipeline has no negative prompt
    return dict(prompt_embeds=text["prompt_embeds"], height=resolution, width=resolution)


def random_text(config, batch: int, tokens: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"prompt_embeds": torch.randn(batch, tokens, int(config["joint_attention_dim"]), generator=generator)}


def unpack_latents(latents: torch.Tensor, resolution: int, factor: int) -> torch.Tensor:
    """The pipeline's ``output_type="latent"`` tokens ``[B, N, C]`` -> the patchified grid ``[B, C, h, w]``."""
    side = resolution // factor // 2
    return latents.permute(0, 2, 1).reshape(latents.shape[0], -1, side, side)


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """The patchified grid -> images in [0, 1] as ``Flux2Pipeline`` decodes: undo the batch norm, unpatchify, VAE."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype)
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents)
    pixels = vae.decode(pipe._unpatchify_latents(latents * std + mean), return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pt").float()


class PrunedFlux2Transformer(PrunedTransformerMixin, Flux2Transformer2DModel):
    """A depth-pruned ``Flux2Transformer2DModel``. ``kept_layers`` is in the source's global numbering (doubles
    first); ``source_stack_depths`` holds the source's ``[num_layers, num_single_layers]``. LoRA through the stock
    class's ``PeftAdapterMixin``."""

    family = "flux2"

    depth_keys = ("num_layers", "num_single_layers")


# Mistral's chat format, reduced to what the pipeline's encoding reads: the fixed system message renders as its
# (empty) markers, so the tiny text encoder's 16 tokens hold the prompt.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}[SYSTEM_PROMPT][/SYSTEM_PROMPT]"
    "{% else %}[INST]{{ message['content'][0]['text'] }}[/INST]{% endif %}{% endfor %}"
)


def build_tiny_flux2_pipeline(num_layers: int = 2, num_single_layers: int = 4, *, seed: int = 0):
    """A complete tiny ``Flux2Pipeline`` (Mistral-3 text encoder, ``AutoencoderKLFlux2``, ``Flux2Transformer2DModel``
    with ``num_layers`` double-stream then ``num_single_layers`` single-stream blocks), random weights, offline.

    The text encoder has 30 layers of width 16 because the pipeline stacks hidden layers 10, 20 and 30 (3 x 16 = the
    transformer's text width 48); its tokenizer is character-level with a chat template (a ``LlamaTokenizer``: the
    pipeline only calls ``apply_chat_template``, and Mistral's ``PixtralProcessor`` needs torchvision). Generate at
    16 px (VAE factor 2, latents in 2x2 patches)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline
    from transformers import LlamaTokenizer, Mistral3Config, Mistral3ForConditionalGeneration

    from ..testing import TINY_CHARACTERS

    specials = ["[IMG]", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{t: 4 + i for i, t in enumerate(specials)}, "\u2581": 9}
    vocab.update({c: len(vocab) + i for i, c in enumerate(TINY_CHARACTERS)})
    tokenizer = LlamaTokenizer(
        vocab=vocab, merges=[], unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(seed)
    text_encoder = Mistral3ForConditionalGeneration(
        Mistral3Config(
            text_config=dict(
                model_type="mistral", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                max_position_embeddings=512, sliding_window=None, **ids,
            ),
            vision_config=dict(
                model_type="pixtral", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16, image_size=30, patch_size=6, head_dim=8,
            ),
            image_token_index=4, spatial_merge_size=1, **ids,
        )
    ).eval()  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()
    torch.manual_seed(seed + 2)
    transformer = Flux2Transformer2DModel(
        in_channels=16,  # 4 latent channels in 2x2 patches
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,
        timestep_guidance_channels=32,
        mlp_ratio=2.0,
        axes_dims_rope=(4, 4, 4, 4),
    ).eval()
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def original_pieces(config, keys) -> dict[str, Piece]:
    """Black Forest Labs' FLUX.2 checkpoint layout (``double_blocks.N`` then ``single_blocks.N``, each renumbered
    from 0), the inverse of diffusers' ``convert_flux2_transformer_checkpoint_to_diffusers``. The single blocks'
    fused projection is one tensor in diffusers too (``to_qkv_mlp_proj``), so unlike Flux.1 no row split depends on
    the published width: any width reads back."""
    top = {
        "img_in": "x_embedder",
        "txt_in": "context_embedder",
        "time_in.in_layer": "time_guidance_embed.timestep_embedder.linear_1",
        "time_in.out_layer": "time_guidance_embed.timestep_embedder.linear_2",
        "guidance_in.in_layer": "time_guidance_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer": "time_guidance_embed.guidance_embedder.linear_2",
        "double_stream_modulation_img.lin": "double_stream_modulation_img.linear",
        "double_stream_modulation_txt.lin": "double_stream_modulation_txt.linear",
        "single_stream_modulation.lin": "single_stream_modulation.linear",
        "final_layer.linear": "proj_out",
    }

    def double(o, d):  # the modulation is the model's, shared by all blocks
        return {
            f"{o}.img_attn.proj": f"{d}.attn.to_out.0",
            f"{o}.txt_attn.proj": f"{d}.attn.to_add_out",
            f"{o}.img_mlp.0": f"{d}.ff.linear_in",
            f"{o}.img_mlp.2": f"{d}.ff.linear_out",
            f"{o}.txt_mlp.0": f"{d}.ff_context.linear_in",
            f"{o}.txt_mlp.2": f"{d}.ff_context.linear_out",
        }

    def single(o, d, keys):
        return renamed({f"{o}.linear1": f"{d}.attn.to_qkv_mlp_proj", f"{o}.linear2": f"{d}.attn.to_out"}, keys)

    return bfl_pieces(keys, top, double, single)


# black-forest-labs/FLUX.2-dev transformer/config.json (equal to diffusers 0.42's class defaults).
FLUX2_DEV_TRANSFORMER = dict(
    patch_size=1,
    in_channels=128,
    num_layers=8,
    num_single_layers=48,
    attention_head_dim=128,
    num_attention_heads=48,
    joint_attention_dim=15360,
    timestep_guidance_channels=256,
    mlp_ratio=3.0,
    axes_dims_rope=(32, 32, 32, 32),
    rope_theta=2000,
    eps=1e-6,
    guidance_embeds=True,
)

FAMILY = ModelFamily(
    name="flux2",
    title="FLUX.2",
    transformer_class="Flux2Transformer2DModel",
    pipeline_classes=("Flux2Pipeline",),
    stacks=(
        BlockStack(
            attr="transformer_blocks",
            depth_key="num_layers",
            kind="double",
            hidden_from_output=joint_output,
            hidden_from_input=joint_input,
        ),
        BlockStack(
            attr="single_transformer_blocks",
            depth_key="num_single_layers",
            kind="single",
            hidden_from_output=first_tensor,
        ),
    ),
    pruned_class=lambda: PrunedFlux2Transformer,
    forward=forward,
    encode=encode,
    random_text=random_text,
    call_kwargs=call_kwargs,
    step_batch=1,  # guidance-distilled: one forward per step
    unpack_latents=unpack_latents,
    decode=decode,
    objective="flow",
    text_keys=("prompt_embeds",),
    real_size=lambda config: (config.get("joint_attention_dim") or 0) >= 15360,  # Mistral Small 3 x 3 layers
    native_resolution=lambda pipe: int(pipe.default_sample_size * pipe.vae_scale_factor),
    defaults=real_defaults(max_sequence_length=512, num_inference_steps=50, guidance_scale=GUIDANCE),
    hub_ids=("black-forest-labs/FLUX.2-dev",),
    references=("flux2",),
    citations={"flux2": "Black Forest Labs, FLUX.2 (2025), https://bfl.ai/blog/flux-2."},
    hub_tag="flux2",
    single_file=SingleFileLayout(
        pieces=original_pieces,
        converter="convert_flux2_transformer_checkpoint_to_diffusers",
        # ComfyUI-GGUF's loader refuses architecture names outside its list, which has no "flux2"; its own converter
        # names every double_blocks / single_blocks layout "flux" (checked by benchmarks/comfy_check.py)
        gguf_arch="flux",
        comfyui="the file has Black Forest Labs' FLUX.2 keys and its GGUF version ComfyUI-GGUF's architecture name "
        "`flux`; ComfyUI 0.3.64, the version checked, predates FLUX.2 and takes the file for Flux.1. Put a `.gguf` "
        'file in `models/unet` ("Unet Loader (GGUF)"), a `.safetensors` file in `models/diffusion_models`, in a '
        "ComfyUI that reads FLUX.2.",
    ),
    tiny_pipeline=build_tiny_flux2_pipeline,
    published=PublishedConfig(
        hub_id="black-forest-labs/FLUX.2-dev",
        title="FLUX.2-dev",
        config=FLUX2_DEV_TRANSFORMER,
        vae_factor=16,  # VAE 8, then 2x2 patches: one token per 16 px
        text_tokens=512,
    ),
    prompt_keyword=True,  # Flux2Pipeline's first parameter is an image
)

__all__ = ["FAMILY", "FLUX2_DEV_TRANSFORMER", "PrunedFlux2Transformer", "build_tiny_flux2_pipeline"]
