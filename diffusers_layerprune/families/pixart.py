"""PixArt-Sigma (and PixArt-alpha): ``PixArtTransformer2DModel``, one stack of ``transformer_blocks``, T5 text.

Chen et al., PixArt-Sigma: Weak-to-Strong Training of Diffusion Transformer for 4K Text-to-Image Generation (2024).
"""

from __future__ import annotations

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import PeftAdapterMixin

from ..prompt_sets import PICKAPIC_SCORING_PROMPTS, PICKAPIC_TRAINING_PROMPTS
from ..pruned import PrunedTransformerMixin
from .base import BlockStack, ModelFamily, encode_masked, masked_call_kwargs, masked_random_text

# PixArt's forward needs these unless sample_size == 128 (the 1024 px model's micro-conditions are unused).
ADDED_COND = {"resolution": None, "aspect_ratio": None}


def forward(transformer, latents, timestep, text) -> torch.Tensor:
    """Noise (and, for PixArt-Sigma's learned variance, variance) prediction ``[B, out_channels, h, w]``."""
    return transformer(
        hidden_states=latents,
        encoder_hidden_states=text["prompt_embeds"],
        encoder_attention_mask=text.get("prompt_attention_mask"),
        timestep=timestep,
        added_cond_kwargs=ADDED_COND,
        return_dict=False,
    )[0]


class PrunedPixArtTransformer(PrunedTransformerMixin, PixArtTransformer2DModel, PeftAdapterMixin):
    """A depth-pruned PixArt transformer that remembers which source blocks it kept.

    Build one with :meth:`from_transformer`; load one with ``from_pretrained``. Block ``i`` of this model is block
    ``config.kept_layers[i]`` of the source model. ``PeftAdapterMixin`` adds ``add_adapter`` / ``fuse_lora`` /
    ``save_lora_adapter``, which diffusers does not give PixArt.

    Extra config args:
        kept_layers: source block index of each block, strictly increasing, ``len == num_layers``.
        source_num_layers: depth of the unpruned source model.
        source_model: hub id or path of the source model, when known.
    """

    family = "pixart"

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
        self._check_pruned(kept_layers, [num_layers], source_num_layers)


FAMILY = ModelFamily(
    name="pixart",
    title="PixArt-Sigma",
    transformer_class="PixArtTransformer2DModel",
    pipeline_classes=("PixArtSigmaPipeline", "PixArtAlphaPipeline"),
    stacks=(BlockStack(attr="transformer_blocks", depth_key="num_layers", kind="block"),),
    pruned_class=lambda: PrunedPixArtTransformer,
    forward=forward,
    encode=encode_masked,
    random_text=masked_random_text("caption_channels"),
    call_kwargs=masked_call_kwargs,
    real_size=lambda config: (config.get("caption_channels") or 0) >= 4096,  # T5-XXL conditioning
    defaults=dict(
        max_sequence_length=300,
        num_inference_steps=20,
        guidance_scale=4.5,
        score_prompts=PICKAPIC_SCORING_PROMPTS,
        train_prompts=PICKAPIC_TRAINING_PROMPTS,
        eval_prompts="hpdv2",
        scorers=["hpsv2.1", "pickscore", "clip"],
        # PixArt-Sigma is run in half precision (its T5-XXL alone is ~19 GB in float32, ~9.5 GB in bfloat16)
        dtype="bfloat16",
    ),
    hub_ids=("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",),
    references=("pixart-sigma",),
    single_file_refusal="PixArtTransformer2DModel has no from_single_file in diffusers 0.42 (no FromOriginalModelMixin), "
    "so no stock loader reads a single file of it; share the folder (DiffusionPipeline.from_pretrained reads it)",
    lora_format="peft",  # diffusers 0.42 has no PixArt LoRA loader
)
