"""Qwen-Image: ``QwenImageTransformer2DModel`` (MMDiT), one stack of dual-stream ``transformer_blocks``, Qwen2.5-VL
text (the last hidden layer, the chat template's first 34 tokens dropped), ``AutoencoderKLQwenImage``.

The text conditioning is an embedding and a mask (kept here under ``prompt_attention_mask``; the pipeline calls it
``prompt_embeds_mask``). Classifier-free guidance is the pipeline's ``true_cfg_scale`` with a negative prompt; its
``guidance_scale`` is for guidance-distilled checkpoints only.

Qwen Team, Qwen-Image Technical Report (2025).
"""

from __future__ import annotations

import torch
from diffusers import QwenImageTransformer2DModel

from ..pruned import PrunedTransformerMixin
from .base import (
    COMFYUI_LOADS,
    BlockStack,
    ModelFamily,
    Piece,
    PublishedConfig,
    SingleFileLayout,
    cached_call_kwargs,
    guidance_input,
    masked_random_text,
    real_defaults,
    second_tensor,
)
from .flux import pack, unpack


def forward(transformer, latents, timestep, text) -> torch.Tensor:
    """Flow (velocity) prediction on unpacked latents ``[B, C, h, w]``; ``timestep`` in 0..1000 (the pipeline's
    scheduler units; the transformer takes it divided by 1000)."""
    b, _, h, w = latents.shape
    out = transformer(
        hidden_states=pack(latents),
        encoder_hidden_states=text["prompt_embeds"],
        encoder_hidden_states_mask=text.get("prompt_attention_mask"),
        timestep=timestep.to(latents.dtype) / 1000,
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        guidance=guidance_input(transformer, b, 1.0, latents.device),
        return_dict=False,
    )[0]
    return unpack(out, h, w)


def encode(pipe, prompts, max_sequence_length: int, device) -> dict[str, torch.Tensor]:
    """``QwenImagePipeline.encode_prompt`` (padded to the batch's longest prompt), padded on to
    ``max_sequence_length`` with masked zeros so that batches of any prompts stack (masked tokens are never
    attended, so the transformer's output is the same)."""
    embeds, mask = pipe.encode_prompt(prompt=list(prompts), device=device, max_sequence_length=max_sequence_length)
    if mask is None:  # the pipeline drops a mask of all ones
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    pad = max_sequence_length - embeds.shape[1]
    embeds = torch.nn.functional.pad(embeds, (0, 0, 0, pad))
    mask = torch.nn.functional.pad(mask, (0, pad))
    return {"prompt_embeds": embeds.cpu(), "prompt_attention_mask": mask.cpu()}


call_kwargs = cached_call_kwargs({"prompt_embeds": "prompt_embeds", "prompt_attention_mask": "prompt_embeds_mask"})


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Unpacked latents -> images in [0, 1] as ``QwenImagePipeline`` decodes: per-channel mean and std, one video
    frame through the VAE."""
    vae = pipe.vae
    latents = latents.to(vae.device, vae.dtype)[:, :, None]
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    pixels = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
    return pipe.image_processor.postprocess(pixels, output_type="pt").float()


class PrunedQwenImageTransformer(PrunedTransformerMixin, QwenImageTransformer2DModel):
    """A depth-pruned ``QwenImageTransformer2DModel``; config keys as the other pruned classes. LoRA through the stock
    class's ``PeftAdapterMixin``."""

    family = "qwenimage"


# The words of QwenImagePipeline's prompt template, each one token in the tiny tokenizer as in Qwen's, so that the
# pipeline's dropped prefix (its first 34 tokens) is the template's system part and the prompt's tokens remain.
TEMPLATE_WORDS = (
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships "
    "of the objects and background:\nuser\nassistant\n"
)


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE tokenizers (GPT-2, Qwen) stand for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]


def build_tiny_qwen_tokenizer():
    """A byte-level ``Qwen2Tokenizer`` built locally: bytes, the template's words (merges spelled out), and the chat
    markers ``<|im_start|>`` / ``<|im_end|>``."""
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_alphabet())}
    pre_tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=[]).backend_tokenizer.pre_tokenizer
    merges = []
    for word in dict.fromkeys(piece for piece, _ in pre_tokenizer.pre_tokenize_str(TEMPLATE_WORDS)):
        for i in range(1, len(word)):
            if word[: i + 1] not in vocab:
                vocab[word[: i + 1]] = len(vocab)
                merges.append((word[:i], word[i]))
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def build_tiny_qwenimage_pipeline(num_layers: int = 6, *, seed: int = 0):
    """A complete tiny ``QwenImagePipeline`` (Qwen2.5-VL text encoder of width 16, ``AutoencoderKLQwenImage`` with
    factor 2, ``QwenImageTransformer2DModel`` of width 32), random weights, offline. Generate at 16 px."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tiny_qwen_tokenizer()
    special = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = dict(bos_token_id=special, eos_token_id=special, pad_token_id=special, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(
            text_config=dict(
                hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, rope_theta=1e6,
                rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, **ids,
            ),
            vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
            hidden_size=16, vision_start_token_id=special, vision_end_token_id=special, vision_token_id=special,
            image_token_id=special, video_token_id=special, **ids,
        )
    ).eval()  # fmt: skip
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    torch.manual_seed(seed + 2)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels packed 2x2
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


def original_pieces(config, keys) -> dict[str, Piece]:
    """Qwen-Image's single-file layout is diffusers' own: diffusers 0.42 reads ``QwenImageTransformer2DModel`` files
    with an identity mapping (no converter, no ``model.diffusion_model.`` prefix stripped), so every tensor keeps its
    name and the blocks stay numbered from 0 as the pruned folder saved them."""
    return {key: Piece((key,)) for key in keys}


# Qwen/Qwen-Image transformer/config.json (equal to diffusers 0.42's class defaults).
QWEN_IMAGE_TRANSFORMER = dict(
    patch_size=2,
    in_channels=64,
    out_channels=16,
    num_layers=60,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=3584,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)

FAMILY = ModelFamily(
    name="qwenimage",
    title="Qwen-Image",
    transformer_class="QwenImageTransformer2DModel",
    pipeline_classes=("QwenImagePipeline",),
    stacks=(
        BlockStack(attr="transformer_blocks", depth_key="num_layers", kind="joint", hidden_from_output=second_tensor),
    ),
    pruned_class=lambda: PrunedQwenImageTransformer,
    forward=forward,
    encode=encode,
    random_text=masked_random_text("joint_attention_dim"),
    call_kwargs=call_kwargs,
    latent_channels=lambda config: int(config["in_channels"]) // 4,
    unpack_latents=lambda latents, resolution, factor: unpack(latents, resolution // factor, resolution // factor),
    decode=decode,
    guidance_args=lambda scale: {"true_cfg_scale": scale, "guidance_scale": None},
    objective="flow",
    real_size=lambda config: (config.get("joint_attention_dim") or 0) >= 3584,  # Qwen2.5-VL-7B conditioning
    native_resolution=lambda pipe: int(pipe.default_sample_size * pipe.vae_scale_factor),
    # guidance_scale: QwenImagePipeline's true_cfg_scale
    defaults=real_defaults(max_sequence_length=512, num_inference_steps=50, guidance_scale=4.0),
    hub_ids=("Qwen/Qwen-Image",),
    references=("qwenimage",),
    citations={"qwenimage": "Wu et al., Qwen-Image Technical Report, 2025."},
    hub_tag="qwen-image",
    single_file=SingleFileLayout(
        pieces=original_pieces,
        converter="identity",  # SINGLE_FILE_LOADABLE_CLASSES maps QwenImageTransformer2DModel's file key for key
        gguf_arch="qwen_image",  # ComfyUI's Qwen-Image model uses diffusers' module names too: the same file
        comfyui=COMFYUI_LOADS,
    ),
    tiny_pipeline=build_tiny_qwenimage_pipeline,
    tiny_call_args=dict(true_cfg_scale=1.0),  # the pipeline's default 4.0 warns without a negative prompt
    published=PublishedConfig(
        hub_id="Qwen/Qwen-Image",
        title="Qwen-Image",
        config=QWEN_IMAGE_TRANSFORMER,
        vae_factor=8,
        text_tokens=128,  # the pipeline pads to the longest prompt, not to a fixed length: a long prompt's count
    ),
)

__all__ = ["FAMILY", "QWEN_IMAGE_TRANSFORMER", "PrunedQwenImageTransformer", "build_tiny_qwenimage_pipeline"]
