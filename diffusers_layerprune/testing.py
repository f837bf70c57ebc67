"""Tiny, randomly initialised PixArt-Sigma pipelines built in code, offline, for tests and benchmarks.

The components have the real classes (``T5EncoderModel``, ``T5Tokenizer``, ``AutoencoderKL``,
``PixArtTransformer2DModel``, ``PixArtSigmaPipeline``), so everything exercised on them is the code path real
checkpoints take; only the sizes are small.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_VOCABULARY: tuple[str, ...] = tuple(
    "a an the of on at in with and small large big tiny red green blue yellow white black orange purple "
    "circle square triangle cross star top bottom left right center middle background photo painting".split()
)


def build_tiny_t5_encoder(vocab_size: int, d_model: int = 32):
    """A 2-layer, 4-head ``T5EncoderModel`` of width ``d_model`` with the current torch seed's random weights."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval()


def build_t5_tokenizer(words: Sequence[str] = DEFAULT_VOCABULARY):
    """A T5 (Unigram) tokenizer whose pieces are whole words, built locally with ``tokenizers``: no download.

    Ids: 0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``, then one id per word in order. Unknown words map to ``<unk>``.
    """
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    # Higher scores for earlier words only break ties; every piece is a whole word.
    vocab += [("\u2581" + w, -1.0 - 0.001 * i) for i, w in enumerate(dict.fromkeys(words))]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


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
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline

    tokenizer = build_t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = build_tiny_t5_encoder(len(tokenizer), d_model=32)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=2 * sample_size,
    ).eval()
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


def tiny_generation_kwargs(pipe, *, steps: int = 2, seed: int = 0) -> dict:
    """Keyword arguments for a fast, deterministic call of a tiny pipeline on CPU."""
    size = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    return dict(
        num_inference_steps=steps,
        height=size,
        width=size,
        use_resolution_binning=False,
        max_sequence_length=16,
        clean_caption=False,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )


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
T5_XXL_ENCODER = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_heads=64,
    num_layers=24,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
    tie_word_embeddings=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)
SDXL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
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


# ----------------------------------------------------------------------------------------------------------------
# Other families: tiny random pipelines with the real component classes
# ----------------------------------------------------------------------------------------------------------------

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-"


def build_clip_tokenizer():
    """A character-level ``CLIPTokenizer`` built locally (no merges: every word splits into characters)."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in _CHARS:
            vocab[c + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_gemma_tokenizer():
    """A character-level ``GemmaTokenizer`` built locally (Sana's text encoder is Gemma-2)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\u2581": 4}
    for c in _CHARS:
        vocab[c] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[])


def build_tiny_clip_text_encoder(vocab_size: int, hidden_size: int = 16, *, with_projection: bool = False):
    """A 2-layer ``CLIPTextModel`` (``CLIPTextModelWithProjection``: SD3's) with the current seed's weights."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval()


def _flow_vae(latent_channels: int, *, seed: int, sample_size: int):
    """A tiny ``AutoencoderKL`` (factor 2) with SD3/Flux-style shift and scale."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    ).eval()


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


def build_tiny_sd3_pipeline(
    num_layers: int = 6, *, sample_size: int = 8, seed: int = 0, dual_attention_layers: tuple[int, ...] = ()
):
    """A complete tiny ``StableDiffusion3Pipeline`` (two CLIP text encoders with projection, a T5, ``AutoencoderKL``
    with 4 latent channels, ``SD3Transformer2DModel``), random weights. ``dual_attention_layers`` makes
    it SD3.5-Medium-like. Images are ``2 * sample_size`` pixels square."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    clip_tokenizer = build_clip_tokenizer()
    t5_tokenizer = build_t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder = build_tiny_clip_text_encoder(len(clip_tokenizer), 16, with_projection=True)
    text_encoder_2 = build_tiny_clip_text_encoder(len(clip_tokenizer), 16, with_projection=True)
    text_encoder_3 = build_tiny_t5_encoder(len(t5_tokenizer), d_model=32)
    vae = _flow_vae(4, seed=seed + 1, sample_size=2 * sample_size)
    torch.manual_seed(seed + 2)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,  # the T5 width; the two CLIPs' 16 + 16 are zero-padded to it
        caption_projection_dim=16,
        pooled_projection_dim=32,  # the two CLIPs' pooled projections, concatenated
        out_channels=4,
        pos_embed_max_size=sample_size,
        dual_attention_layers=tuple(dual_attention_layers),
        qk_norm="rms_norm" if dual_attention_layers else None,
    ).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(),
        text_encoder_3=text_encoder_3,
        tokenizer_3=t5_tokenizer,
    )


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
    vae = _flow_vae(4, seed=seed + 1, sample_size=16)
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


# Family name -> tiny pipeline builder (short names ``tiny-random-<family>``; ``tiny-random`` is PixArt-Sigma).
TINY_BUILDERS = {
    "pixart": build_tiny_pixart_pipeline,
    "sana": build_tiny_sana_pipeline,
    "sd3": build_tiny_sd3_pipeline,
    "flux": build_tiny_flux_pipeline,
}


# Pixel size of each family's tiny pipeline (SanaPipeline wants multiples of 32).
TINY_RESOLUTION = {"pixart": 16, "sana": 32, "sd3": 16, "flux": 16}


def tiny_call_kwargs(pipe, *, steps: int = 2, seed: int = 0) -> dict:
    """Keyword arguments for a fast, deterministic call of any tiny pipeline of this module on CPU."""
    from .families import family_of_pipeline

    family = family_of_pipeline(pipe)
    size = TINY_RESOLUTION[family.name]
    kwargs = dict(
        num_inference_steps=steps,
        height=size,
        width=size,
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
    )
    if family.name in ("pixart", "sana"):
        kwargs.update(use_resolution_binning=False, clean_caption=False)
    return kwargs


# Published transformer configs (diffusers' config.json of each checkpoint), for benchmarks with random weights.
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
SD35_MEDIUM_TRANSFORMER = dict(  # stabilityai/stable-diffusion-3.5-medium
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    dual_attention_layers=tuple(range(13)),
    qk_norm="rms_norm",
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
# family -> (config, VAE downsampling factor, text tokens the pipeline pads to)
PUBLISHED_TRANSFORMERS = {
    "pixart": (PIXART_SIGMA_XL_TRANSFORMER, 8, 300),  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
    "sana": (SANA_1600M_TRANSFORMER, 32, 300),
    "sd3": (SD35_MEDIUM_TRANSFORMER, 8, 333),  # 77 CLIP tokens + 256 T5 tokens
    "flux": (FLUX1_DEV_TRANSFORMER, 8, 512),
}


def build_tiny_controlnet(transformer, *depths: int, seed: int = 0, **config):
    """A stock ControlNet of the transformer's family (``FluxControlNetModel``, ``SD3ControlNetModel``) with the tiny
    transformer's widths and ``depths`` blocks per ControlNet block list, random weights. The parameters diffusers
    initialises to zero (the residual projections, the condition embedding) get small random values, so that every
    residual changes the image. ``config``: further ControlNet config values."""
    import diffusers

    from .families import family_of

    layout = family_of(transformer).controlnet
    cls = getattr(diffusers, layout.model_class)
    accepted = set(cls.extract_init_dict(dict(transformer.config))[0])  # the widths the ControlNet shares
    values = {k: v for k, v in transformer.config.items() if k in accepted}
    values.update({stack.depth_key: depth for stack, depth in zip(layout.stacks, depths, strict=False)})
    values.update(config)
    torch.manual_seed(seed)
    model = cls.from_config(values).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model
