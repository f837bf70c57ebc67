"""Sana: ``SanaTransformer2DModel`` (linear-attention DiT), one stack of ``transformer_blocks``, Gemma-2 text, DC-AE.

Xie et al., SANA: Efficient High-Resolution Image Synthesis with Linear Diffusion Transformers (ICLR 2025).
"""

from __future__ import annotations

import torch
from diffusers import SanaTransformer2DModel

from ..pruned import PrunedTransformerMixin
from ..testing import build_gemma_tokenizer
from .base import (
    BlockStack,
    ControlNetLayout,
    ControlNetStack,
    ModelFamily,
    Piece,
    PublishedConfig,
    SingleFileLayout,
    binning_call_args,
    block_count,
    encode_masked,
    fused,
    masked_call_kwargs,
    masked_random_text,
    real_defaults,
    renamed,
)

# SanaPipeline's default (distilled-guidance Sana-Sprint checkpoints only read it when guidance_embeds is set).
GUIDANCE = 4.5


def forward(transformer, latents, timestep, text, guidance: float = GUIDANCE) -> torch.Tensor:
    """Flow (velocity) prediction ``[B, out_channels, h, w]``; ``timestep`` in 0..1000 as the pipeline passes it;
    ``guidance``: the guidance input of guidance-distilled checkpoints (Sana-Sprint; unused by the others)."""
    config = getattr(transformer, "module", transformer).config  # DDP wraps the model
    scale, guidance = guidance, None
    if config.get("guidance_embeds"):
        guidance = torch.full((latents.shape[0],), scale, device=latents.device, dtype=latents.dtype)
    return transformer(
        hidden_states=latents,
        encoder_hidden_states=text["prompt_embeds"],
        encoder_attention_mask=text.get("prompt_attention_mask"),
        timestep=timestep * config.get("timestep_scale", 1.0),
        guidance=guidance,
        return_dict=False,
    )[0]


# Length of the original checkpoint's learned null caption (``y_embedder.y_embedding``, the model's max text length).
NULL_CAPTION_TOKENS = 300


def original_pieces(config, keys) -> dict[str, Piece]:
    """NVlabs' Sana checkpoint layout (``blocks.N``), the inverse of diffusers' ``convert_sana_transformer_to_diffusers``.

    The original also holds a positional-embedding buffer and the learned null caption used for caption dropout in
    training; diffusers' converter reads and drops both (the diffusers model holds neither), so they are written as
    zeros of the original shapes."""
    keys = set(keys)
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    tokens = (int(config["sample_size"]) // int(config["patch_size"])) ** 2
    pieces = {
        "pos_embed": Piece(fill=(1, tokens, width)),
        "y_embedder.y_embedding": Piece(fill=(NULL_CAPTION_TOKENS, int(config["caption_channels"]))),
        "attention_y_norm.weight": Piece(("caption_norm.weight",)),
        "final_layer.scale_shift_table": Piece(("scale_shift_table",)),
    }
    pieces.update(
        renamed(
            {
                "x_embedder.proj": "patch_embed.proj",
                "t_embedder.mlp.0": "time_embed.emb.timestep_embedder.linear_1",
                "t_embedder.mlp.2": "time_embed.emb.timestep_embedder.linear_2",
                "t_block.1": "time_embed.linear",
                "y_embedder.y_proj.fc1": "caption_projection.linear_1",
                "y_embedder.y_proj.fc2": "caption_projection.linear_2",
                "final_layer.linear": "proj_out",
            },
            keys,
        )
    )
    for i in range(block_count(keys, "transformer_blocks")):
        d, o = f"transformer_blocks.{i}", f"blocks.{i}"
        pieces[f"{o}.scale_shift_table"] = Piece((f"{d}.scale_shift_table",))
        pieces.update(fused(f"{o}.attn.qkv", [f"{d}.attn1.to_q", f"{d}.attn1.to_k", f"{d}.attn1.to_v"], keys))
        pieces.update(fused(f"{o}.cross_attn.kv_linear", [f"{d}.attn2.to_k", f"{d}.attn2.to_v"], keys))
        pieces.update(
            renamed(
                {
                    f"{o}.attn.proj": f"{d}.attn1.to_out.0",
                    f"{o}.cross_attn.q_linear": f"{d}.attn2.to_q",
                    f"{o}.cross_attn.proj": f"{d}.attn2.to_out.0",
                    f"{o}.mlp.inverted_conv.conv": f"{d}.ff.conv_inverted",
                    f"{o}.mlp.depth_conv.conv": f"{d}.ff.conv_depth",
                    f"{o}.mlp.point_conv.conv": f"{d}.ff.conv_point",
                },
                keys,
            )
        )
    return pieces


class PrunedSanaTransformer(PrunedTransformerMixin, SanaTransformer2DModel):
    """A depth-pruned ``SanaTransformer2DModel``; config keys as :class:`PrunedPixArtTransformer`. LoRA through the
    stock class's ``PeftAdapterMixin``."""

    family = "sana"


def controlnet_sample(stack: int, block: int, blocks: int, samples: int, controlnet_config) -> int | None:
    """The residual ``SanaTransformer2DModel.forward`` adds after block ``block``: sample ``block - 1`` for blocks
    ``1..samples``, none after block 0 and after the blocks beyond the ControlNet's depth."""
    return block - 1 if 0 < block <= samples else None


CONTROLNET = ControlNetLayout(
    model_class="SanaControlNetModel",
    pipeline_class="SanaControlNetPipeline",
    stacks=(ControlNetStack(blocks="transformer_blocks", projections="controlnet_blocks", depth_key="num_layers"),),
    sample_read=controlnet_sample,
    # Sana's gates add the shared timestep embedding to a per-block table and its cross-attention is not gated, so a
    # block passes its input on when the output projections of its three branches are zero.
    identity_gates={"attn1.to_out.0": {1: (0,)}, "attn2.to_out.0": {1: (0,)}, "ff.conv_point": {1: (0,)}},
)


def build_tiny_sana_pipeline(num_layers: int = 6, *, sample_size: int = 16, seed: int = 0):
    """A complete tiny ``SanaPipeline`` (Gemma-2 text encoder, DC-AE, ``SanaTransformer2DModel``), random weights.

    The DC-AE downsamples by 2, so images are ``2 * sample_size`` pixels square (SanaPipeline wants multiples of
    32)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    tokenizer = build_gemma_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Gemma2Model(
        Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=0,
        )
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(seed + 2)
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=16,
        sample_size=sample_size,
        patch_size=1,
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


SANA_1600M_TRANSFORMER = dict(  # Efficient-Large-Model/Sana_1600M_1024px_diffusers
    in_channels=32,
    out_channels=32,
    num_attention_heads=70,
    attention_head_dim=32,
    num_layers=20,
    num_cross_attention_heads=20,
    cross_attention_head_dim=112,
    cross_attention_dim=2240,
    caption_channels=2304,
    mlp_ratio=2.5,
    sample_size=32,
    patch_size=1,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)


FAMILY = ModelFamily(
    name="sana",
    title="Sana",
    transformer_class="SanaTransformer2DModel",
    pipeline_classes=("SanaPipeline",),
    stacks=(BlockStack(attr="transformer_blocks", depth_key="num_layers", kind="block"),),
    pruned_class=lambda: PrunedSanaTransformer,
    forward=forward,
    encode=encode_masked,
    random_text=masked_random_text("caption_channels"),
    call_kwargs=masked_call_kwargs,
    card_call_args=binning_call_args((16, 32, 64, 128)),  # SanaPipeline's aspect-ratio bins
    objective="flow",
    # train_dreambooth_lora_sana.py trains uniform and unshifted (its table ignores the DPM-Solver's flow_shift)
    caption_images=True,  # train_distill encodes image-caption datasets with the family's VAE (image_data.vae_latents)
    training_objective=dict(weighting_scheme="none", precondition_outputs=0, timestep_shift="none"),
    real_size=lambda config: (config.get("caption_channels") or 0) >= 2304,  # Gemma-2-2B conditioning
    defaults=real_defaults(max_sequence_length=300, num_inference_steps=20, guidance_scale=4.5),
    hub_ids=("Efficient-Large-Model/Sana_1600M_1024px_diffusers",),
    references=("sana",),
    controlnet=CONTROLNET,
    single_file=SingleFileLayout(
        pieces=original_pieces,
        converter="convert_sana_transformer_to_diffusers",
        gguf_arch="sana",  # no ComfyUI-GGUF name exists for Sana
        comfyui="ComfyUI has no Sana model: it takes the file for PixArt-Sigma, whose blocks have other keys and widths, "
        "and ComfyUI-GGUF refuses the architecture. Use the diffusers snippet above.",
    ),
    hub_tag="sana",
    citations={
        "sana": "Xie et al., SANA: Efficient High-Resolution Image Synthesis with Linear Diffusion Transformers, "
        "ICLR 2025."
    },
    tiny_pipeline=build_tiny_sana_pipeline,
    tiny_resolution=32,  # SanaPipeline wants multiples of 32
    tiny_call_args=dict(use_resolution_binning=False, clean_caption=False),
    published=PublishedConfig(
        hub_id="Efficient-Large-Model/Sana_1600M_1024px_diffusers",
        title="Sana 1.6B",
        config=SANA_1600M_TRANSFORMER,
        vae_factor=32,
        text_tokens=300,
    ),
    encode_by_tokens=True,
)

__all__ = ["FAMILY", "PrunedSanaTransformer", "build_tiny_sana_pipeline", "SANA_1600M_TRANSFORMER"]
