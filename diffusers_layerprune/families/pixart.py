"""PixArt-Sigma (and PixArt-alpha): ``PixArtTransformer2DModel``, one stack of ``transformer_blocks``, T5 text.

Chen et al., PixArt-Sigma: Weak-to-Strong Training of Diffusion Transformer for 4K Text-to-Image Generation (2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.loaders import PeftAdapterMixin

from ..pruned import PrunedTransformerMixin
from ..testing import (
    DEFAULT_VOCABULARY,
    SDXL_VAE,
    T5_XXL_ENCODER,
    build_t5_tokenizer,
    build_tiny_t5_encoder,
    build_tiny_vae,
)
from .base import (
    BlockStack,
    ModelFamily,
    PublishedConfig,
    binning_call_args,
    encode_masked,
    masked_call_kwargs,
    masked_random_text,
    real_defaults,
)

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


def build_tiny_transformer(
    num_layers: int = 6,
    *,
    sample_size: int = 8,
    num_attention_heads: int = 2,
    attention_head_dim: int = 8,
    caption_channels: int = 32,
    in_channels: int = 4,
    out_channels: int = 8,
    seed: int = 0,
):
    """A randomly initialised ``PixArtTransformer2DModel`` (PixArt-Sigma layout: 8 output channels)."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    inner = num_attention_heads * attention_head_dim
    model = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=num_layers,
        patch_size=2,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=in_channels,
        out_channels=out_channels,
        cross_attention_dim=inner,
        caption_channels=caption_channels,
        norm_num_groups=1,
    )
    return model.eval()


def build_tiny_pixart_pipeline(
    num_layers: int = 6,
    *,
    sample_size: int = 8,
    seed: int = 0,
    words: Sequence[str] = DEFAULT_VOCABULARY,
):
    """A complete tiny ``PixArtSigmaPipeline`` with random weights.

    The VAE downsamples by 2, so images are ``2 * sample_size`` pixels square. Generate with
    ``use_resolution_binning=False`` and ``height = width = 2 * sample_size``.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline

    tokenizer = build_t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = build_tiny_t5_encoder(len(tokenizer), d_model=32)
    vae = build_tiny_vae(4, seed=seed + 1, sample_size=2 * sample_size)
    transformer = build_tiny_transformer(
        num_layers, sample_size=sample_size, caption_channels=text_encoder.config.d_model, seed=seed + 2
    )
    scheduler = DPMSolverMultistepScheduler()
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def save_tiny_pixart_pipeline(path: str | Path, num_layers: int = 6, **kwargs) -> Path:
    """Build :func:`build_tiny_pixart_pipeline` and ``save_pretrained`` it to ``path`` (safetensors)."""
    pipe = build_tiny_pixart_pipeline(num_layers, **kwargs)
    pipe.save_pretrained(path)
    return Path(path)


# PixArt-Sigma-XL-2-1024-MS's transformer config (diffusers), T5-XXL v1.1's encoder width and the SDXL VAE that
# PixArt-Sigma uses: the sizes a real run has, for rehearsals with random weights.
PIXART_SIGMA_XL_TRANSFORMER = dict(
    sample_size=128,
    num_layers=28,
    num_attention_heads=16,
    attention_head_dim=72,
    in_channels=4,
    out_channels=8,
    patch_size=2,
    cross_attention_dim=1152,
    caption_channels=4096,
    interpolation_scale=2,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    num_embeds_ada_norm=1000,
    attention_bias=True,
    activation_fn="gelu-approximate",
    use_additional_conditions=False,
)


def build_full_size_pixart_sigma_pipeline(
    *, text_encoder_layers: int = 2, seed: int = 0, words: Sequence[str] = DEFAULT_VOCABULARY
):
    """A ``PixArtSigmaPipeline`` with PixArt-Sigma-XL's real transformer (28 blocks, width 1152, ~0.61B parameters),
    the SDXL VAE, and a T5 encoder of T5-XXL's real width (d_model 4096, 64 heads, d_ff 10240, 32128-token
    embedding) but only ``text_encoder_layers`` of its 24 layers (~0.19B parameters each, plus 0.13B embedding), all
    randomly initialised. Costs, memory and file sizes are the real ones, except the text encoder's depth.
    The tokenizer is word-level over ``words`` (ids fit the real vocabulary size)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer(words)
    if len(tokenizer) > T5_XXL_ENCODER["vocab_size"]:
        raise ValueError(f"{len(tokenizer)} words do not fit T5's vocabulary of {T5_XXL_ENCODER['vocab_size']}")
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(T5Config(**{**T5_XXL_ENCODER, "num_layers": text_encoder_layers})).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**SDXL_VAE).eval()
    torch.manual_seed(seed + 2)
    transformer = PixArtTransformer2DModel(**PIXART_SIGMA_XL_TRANSFORMER).eval()
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


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
    card_call_args=binning_call_args((32, 64, 128, 256)),  # PixArtSigmaPipeline's aspect-ratio bins
    real_size=lambda config: (config.get("caption_channels") or 0) >= 4096,  # T5-XXL conditioning
    defaults=real_defaults(max_sequence_length=300, num_inference_steps=20, guidance_scale=4.5),
    hub_ids=("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",),
    references=("pixart-sigma",),
    single_file_refusal="PixArtTransformer2DModel has no from_single_file in diffusers 0.42 (no FromOriginalModelMixin), "
    "so no stock loader reads a single file of it; share the folder (DiffusionPipeline.from_pretrained reads it)",
    lora_format="peft",  # diffusers 0.42 has no PixArt LoRA loader
    hub_tag="pixart-sigma",
    citations={
        "pixart-sigma": "Chen et al., PixArt-Sigma: Weak-to-Strong Training of Diffusion Transformer for 4K "
        "Text-to-Image Generation, ECCV 2024."
    },
    tiny_pipeline=build_tiny_pixart_pipeline,
    tiny_call_args=dict(use_resolution_binning=False, clean_caption=False),
    published=PublishedConfig(
        hub_id="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        title="PixArt-Sigma-XL",
        config=PIXART_SIGMA_XL_TRANSFORMER,
        vae_factor=8,
        text_tokens=300,
    ),
    encode_by_tokens=True,
    caption_images=True,  # train_distill encodes image-caption datasets with PixArt's VAE and T5
    routing=True,
)

__all__ = [
    "FAMILY",
    "PrunedPixArtTransformer",
    "build_tiny_transformer",
    "build_tiny_pixart_pipeline",
    "save_tiny_pixart_pipeline",
    "build_full_size_pixart_sigma_pipeline",
    "PIXART_SIGMA_XL_TRANSFORMER",
]
