"""Tiny, randomly initialised pipelines built in code, offline, for tests and benchmarks: the shared components.

Each family's tiny pipeline is built by its own module (``ModelFamily.tiny_pipeline``, short name
``tiny-random-<family>``) from the components here (T5, CLIP and Gemma encoders and tokenizers, small VAEs), with
the real classes, so everything exercised on them is the code path real checkpoints take; only the sizes are small.
Names each family module exports (``build_tiny_flux_pipeline``, published configs) stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence

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


# ----------------------------------------------------------------------------------------------------------------
# Components of the tiny pipelines (real classes, tiny sizes)
# ----------------------------------------------------------------------------------------------------------------

_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789,.-"
TINY_CHARACTERS = _CHARS  # the characters of the character-level tiny tokenizers


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


def build_tiny_vae(latent_channels: int, *, seed: int, sample_size: int, **config):
    """A tiny ``AutoencoderKL`` (factor 2: two blocks of 8 and 16 channels) with weights of ``seed``; ``config``
    adds stock config keys (quant convs, shift and scale)."""
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
        **config,
    ).eval()


def build_flow_vae(latent_channels: int, *, seed: int, sample_size: int):
    """A tiny ``AutoencoderKL`` (factor 2) with SD3/Flux-style shift and scale."""
    return build_tiny_vae(
        latent_channels,
        seed=seed,
        sample_size=sample_size,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )


def tiny_call_kwargs(pipe, *, steps: int = 2, seed: int = 0) -> dict:
    """Keyword arguments for a fast, deterministic call of any family's tiny pipeline on CPU."""
    from .families import family_of_pipeline

    family = family_of_pipeline(pipe)
    size = family.tiny_resolution
    return dict(
        num_inference_steps=steps,
        height=size,
        width=size,
        max_sequence_length=16,
        output_type="pt",
        generator=torch.Generator().manual_seed(seed),
        **family.tiny_call_args,
    )


def tiny_controlnet_images(pipe) -> torch.Tensor:
    """One "a red circle" image of a tiny ControlNet pipeline (any family's) as :func:`tiny_call_kwargs` calls it,
    with a fixed random control image (seed 1) and the global seed set to 0 (SD3's pipeline samples the control
    latents from the global generator)."""
    from .families import family_of_pipeline

    size = family_of_pipeline(pipe).tiny_resolution
    control = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    return pipe("a red circle", control_image=control, **tiny_call_kwargs(pipe)).images


def __getattr__(name: str):
    """The registry's views (``TINY_BUILDERS``, ``TINY_RESOLUTION``, ``PUBLISHED_TRANSFORMERS``, family ->
    value) and each family module's exported names, computed on first use (they import every family module)."""
    from .families import FAMILIES, exported, get_family

    if name == "TINY_BUILDERS":
        return {f: get_family(f).tiny_pipeline for f in FAMILIES}
    if name == "TINY_RESOLUTION":
        return {f: get_family(f).tiny_resolution for f in FAMILIES}
    if name == "PUBLISHED_TRANSFORMERS":  # family -> (config, VAE downsampling factor, text tokens)
        published = {f: get_family(f).published for f in FAMILIES}
        return {f: (dict(p.config), p.vae_factor, p.text_tokens) for f, p in published.items() if p is not None}
    value = exported(name)
    if value is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return value


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
